//! Which iptables program writes the rules: `iptables-nft` (nf_tables; needs NET_ADMIN) or
//! `iptables-legacy` (x_tables; needs NET_ADMIN and NET_RAW). Both program the same kernel NAT
//! hook, so either works in a fresh pod namespace; the automatic choice follows what the pod
//! already uses.
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use super::rules::nat;
use super::{CHAIN, NetfilterError, Runner};

/// Which iptables backend writes the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The backend that already holds our chain; else the one with more `nat` rules; else nft
    /// when it works; else legacy.
    Auto,
    /// `iptables-nft` (nf_tables kernel API; needs NET_ADMIN only).
    Nft,
    /// `iptables-legacy` (x_tables kernel API; needs NET_ADMIN and NET_RAW).
    Legacy,
}

/// What kind of iptables program a [`Tool`] is, as far as its name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    /// `iptables-nft`.
    Nft,
    /// `iptables-legacy`: also needs NET_RAW.
    Legacy,
    /// A plain `iptables`, whichever backend it is.
    Default,
    /// A program given with `--iptables`.
    AsGiven,
}

impl fmt::Display for ToolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ToolKind::Nft => "nft",
            ToolKind::Legacy => "legacy",
            ToolKind::Default => "default",
            ToolKind::AsGiven => "as given",
        })
    }
}

/// The iptables program and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub program: PathBuf,
    pub kind: ToolKind,
}

/// Directories searched for iptables besides `PATH` (distroless images often have no PATH).
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

fn find_program(name: &str, path_var: Option<OsString>) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = path_var
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Counts `nat` rules and tells whether our chain is there, for one program.
fn probe(runner: &mut impl Runner, program: &Path) -> Option<(bool, usize)> {
    let out = runner.run(program, &nat(&["-S"])).ok()?;
    if !out.ok() {
        return None;
    }
    let ours = out
        .stdout
        .lines()
        .any(|l| l.trim() == format!("-N {CHAIN}"));
    let rules = out.stdout.lines().filter(|l| l.starts_with("-A ")).count();
    Some((ours, rules))
}

/// Picks the iptables program for `backend`.
pub fn choose_tool(
    runner: &mut impl Runner,
    backend: Backend,
    explicit: Option<&Path>,
) -> Result<Tool, NetfilterError> {
    if let Some(p) = explicit {
        return Ok(Tool {
            program: p.to_path_buf(),
            kind: ToolKind::AsGiven,
        });
    }
    let path_var = std::env::var_os("PATH");
    let nft = find_program("iptables-nft", path_var.clone());
    let legacy = find_program("iptables-legacy", path_var.clone());
    let plain = || find_program("iptables", path_var.clone());
    let missing = |looked_for: &str| NetfilterError::ToolMissing {
        looked_for: looked_for.to_owned(),
    };
    match backend {
        Backend::Nft => nft
            .map(|program| Tool {
                program,
                kind: ToolKind::Nft,
            })
            .ok_or_else(|| missing("iptables-nft")),
        Backend::Legacy => legacy
            .map(|program| Tool {
                program,
                kind: ToolKind::Legacy,
            })
            .ok_or_else(|| missing("iptables-legacy")),
        Backend::Auto => {
            let mut candidates: Vec<(PathBuf, ToolKind)> = Vec::new();
            if let Some(p) = nft {
                candidates.push((p, ToolKind::Nft));
            }
            if let Some(p) = legacy {
                candidates.push((p, ToolKind::Legacy));
            }
            if candidates.is_empty() {
                return plain()
                    .map(|program| Tool {
                        program,
                        kind: ToolKind::Default,
                    })
                    .ok_or_else(|| missing("iptables-nft, iptables-legacy, iptables"));
            }
            let probed: Vec<_> = candidates
                .iter()
                .map(|(p, b)| (p.clone(), *b, probe(runner, p)))
                .collect();
            // 1. whichever already holds our chain (so --remove and re-runs hit the same set);
            // 2. else the one with more nat rules (e.g. a mesh's init already chose it);
            // 3. else the first that works, nft before legacy.
            let pick = probed
                .iter()
                .find(|(_, _, r)| matches!(r, Some((true, _))))
                .or_else(|| {
                    probed
                        .iter()
                        .filter_map(|c| c.2.map(|(_, n)| (c, n)))
                        .filter(|(_, n)| *n > 0)
                        .max_by_key(|(_, n)| *n)
                        .map(|(c, _)| c)
                })
                .or_else(|| probed.iter().find(|(_, _, r)| r.is_some()))
                .or_else(|| probed.first());
            Ok(pick.map_or_else(
                || Tool {
                    program: PathBuf::from("iptables"),
                    kind: ToolKind::Default,
                },
                |(program, kind, _)| Tool {
                    program: program.clone(),
                    kind: *kind,
                },
            ))
        }
    }
}

/// Effective capabilities of this process, from `/proc/self/status` (`None` if unreadable).
pub fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

pub fn check_caps(caps: Option<u64>, kind: ToolKind) -> Result<(), NetfilterError> {
    let Some(caps) = caps else { return Ok(()) };
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    if !has(CAP_NET_ADMIN) {
        return Err(NetfilterError::MissingCapability {
            extra: if kind == ToolKind::Legacy {
                " (and NET_RAW for iptables-legacy)"
            } else {
                ""
            },
            caps: if kind == ToolKind::Legacy {
                "NET_ADMIN, NET_RAW"
            } else {
                "NET_ADMIN"
            },
        });
    }
    if kind == ToolKind::Legacy && !has(CAP_NET_RAW) {
        return Err(NetfilterError::MissingCapability {
            extra: " and, for iptables-legacy, NET_RAW",
            caps: "NET_ADMIN, NET_RAW",
        });
    }
    Ok(())
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (backend {})", self.program.display(), self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::fake::FakeTables;

    #[test]
    fn missing_capabilities_are_named_with_the_ones_to_add() {
        let err = check_caps(Some(0), ToolKind::Nft).expect_err("no caps");
        assert!(err.to_string().contains("capabilities.add: [NET_ADMIN]"));
        let err = check_caps(Some(1 << CAP_NET_ADMIN), ToolKind::Legacy).expect_err("no NET_RAW");
        assert!(err.to_string().contains("NET_RAW"));
        check_caps(Some(1 << CAP_NET_ADMIN), ToolKind::Nft).expect("nft needs NET_ADMIN only");
        check_caps(None, ToolKind::Nft).expect("unknown caps: let iptables decide");
    }

    #[test]
    fn an_explicit_program_is_used_as_given() {
        let mut t = FakeTables::default();
        let tool =
            choose_tool(&mut t, Backend::Auto, Some(Path::new("/x/iptables"))).expect("tool");
        assert_eq!(tool.program, PathBuf::from("/x/iptables"));
        assert!(t.log.is_empty());
    }
}
