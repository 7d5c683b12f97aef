//! `identity-sidecar init-network`: makes the pod's IMDS address reach the sidecar.
//!
//! Run once by an init container (with `NET_ADMIN`, and `NET_RAW` for the legacy backend) in
//! the pod's network namespace, before the app starts. It installs NAT rules that send TCP to
//! `169.254.169.254:80` to the sidecar on `127.0.0.1:<port>`, except connections made by the
//! sidecar's own user id, so that `serve --imds-passthrough` can still reach the real IMDS and
//! never loops back into itself. This is only needed for apps whose SDK hard-codes the IMDS
//! address (Go azidentity, adal, Rust); every other app should use the App Service endpoint
//! (`IDENTITY_ENDPOINT`/`IDENTITY_HEADER`), which needs no privileges at all.
//!
//! The rules live in one chain of their own in the `nat` table, reached by one jump from
//! `OUTPUT`:
//!
//! ```text
//! -A OUTPUT -d 169.254.169.254/32 -p tcp --dport 80 -j IDENTITY_SIDECAR
//! -A IDENTITY_SIDECAR -m owner --uid-owner <uid> -j RETURN
//! -A IDENTITY_SIDECAR -p tcp -j DNAT --to-destination 127.0.0.1:<port>
//! ```
//!
//! Installing is idempotent (the chain is created if missing, then flushed and refilled; the
//! jump is added only when `-C` does not find it), and `--remove` takes out the jump and the
//! chain again. Rules are written by running the `iptables` tool with an explicit argv (no
//! shell); `--backend` picks `iptables-nft` or `iptables-legacy` (both program the same kernel
//! NAT hook, so either works in a fresh pod namespace). IPv4 only: IMDS has no IPv6 address.
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The user id the sidecar image runs as, and so the one whose traffic is not redirected.
///
/// 1501 is what the Azure Workload Identity proxy image uses (and chose to stay clear of
/// Istio's 1337), so mesh exclusions written for that proxy keep working.
pub const SIDECAR_UID: u32 = 1501;

/// The sidecar's default port on `127.0.0.1` (same as `serve`'s default listen address).
pub const DEFAULT_PORT: u16 = 8000;

/// Our own chain in the `nat` table.
pub const CHAIN: &str = "IDENTITY_SIDECAR";

/// The IMDS address and port that get redirected (IPv4 only: IMDS has no IPv6 address).
pub const IMDS_ADDR: &str = "169.254.169.254";
/// See [`IMDS_ADDR`].
pub const IMDS_PORT: u16 = 80;

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

/// Arguments of `identity-sidecar init-network`.
#[derive(Clone, Debug, clap::Args)]
pub struct InitNetworkArgs {
    /// Port the sidecar listens on at 127.0.0.1; IMDS traffic is sent there.
    #[arg(long, env = "IDENTITY_SIDECAR_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// User id whose connections are left alone: the sidecar's own (the image's USER).
    #[arg(long, env = "IDENTITY_SIDECAR_UID", default_value_t = SIDECAR_UID)]
    pub uid: u32,
    /// Remove the rules instead of installing them.
    #[arg(long)]
    pub remove: bool,
    /// Which iptables backend to use.
    #[arg(long, value_enum, env = "IDENTITY_SIDECAR_IPTABLES_BACKEND", default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Path of the iptables program to run; overrides --backend's choice of program.
    #[arg(long, value_name = "PATH")]
    pub iptables: Option<PathBuf>,
    /// Print the iptables commands instead of running them (needs no privileges).
    #[arg(long)]
    pub dry_run: bool,
}

/// What went wrong, in words that say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum InitNetworkError {
    #[error(
        "no iptables program found (looked for {looked_for} in PATH, /usr/sbin and /sbin); \
         run init-network from the init image (Dockerfile target `init`) or pass --iptables PATH"
    )]
    ToolMissing { looked_for: String },
    #[error(
        "init-network needs the NET_ADMIN capability{extra}; give the init container \
         `securityContext.capabilities.add: [{caps}]` (and run it as uid 0)"
    )]
    MissingCapability {
        extra: &'static str,
        caps: &'static str,
    },
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Result of running one iptables command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs one iptables command. Abstracted so the rule logic is testable without root.
pub trait Runner {
    fn run(&mut self, program: &Path, args: &[String]) -> Result<Output, InitNetworkError>;
}

/// Runs the real program with the given argv (no shell).
pub struct ProcessRunner;

impl Runner for ProcessRunner {
    fn run(&mut self, program: &Path, args: &[String]) -> Result<Output, InitNetworkError> {
        let out = std::process::Command::new(program)
            .args(args)
            // A pipe closed at once rather than /dev/null: works where /dev is not mounted.
            .stdin(std::process::Stdio::piped())
            .output()
            .map_err(|source| InitNetworkError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Prints commands instead of running them; every check reports "absent". Read-only commands
/// (listing, checking) are printed as `#` comments, so the rest is a script that would apply.
struct DryRunner;

impl Runner for DryRunner {
    fn run(&mut self, program: &Path, args: &[String]) -> Result<Output, InitNetworkError> {
        let read_only = args.iter().any(|a| a == "-S" || a == "-C");
        let prefix = if read_only { "# " } else { "" };
        println!("{prefix}{}", render(program, args));
        Ok(Output {
            // `-C RULE` and `-S CHAIN` report "absent", so the full install is printed.
            code: Some(
                if args.iter().any(|a| a == "-C") || (args.len() > 3 && args[2] == "-S") {
                    1
                } else {
                    0
                },
            ),
            stdout: String::new(),
            stderr: String::new(),
        })
    }
}

fn render(program: &Path, args: &[String]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn nat(args: &[&str]) -> Vec<String> {
    let mut v = vec!["-t".to_owned(), "nat".to_owned()];
    v.extend(args.iter().map(|s| (*s).to_owned()));
    v
}

/// The jump from `OUTPUT` into our chain, as the rule spec after `-A/-C/-D OUTPUT`.
fn jump_spec() -> Vec<String> {
    [
        "-d",
        &format!("{IMDS_ADDR}/32"),
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        &IMDS_PORT.to_string(),
        "-j",
        CHAIN,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn with_spec(head: &[&str], spec: &[String]) -> Vec<String> {
    let mut v = nat(head);
    v.extend(spec.iter().cloned());
    v
}

/// The iptables program and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub program: PathBuf,
    pub backend: &'static str,
}

/// Applies rules with one iptables program.
pub struct Rules<'a, R: Runner> {
    runner: &'a mut R,
    program: PathBuf,
}

impl<'a, R: Runner> Rules<'a, R> {
    pub fn new(runner: &'a mut R, program: PathBuf) -> Self {
        Self { runner, program }
    }

    fn call(&mut self, args: Vec<String>) -> Result<Output, InitNetworkError> {
        self.runner.run(&self.program, &args)
    }

    fn must(&mut self, args: Vec<String>) -> Result<Output, InitNetworkError> {
        let out = self.call(args.clone())?;
        if out.ok() {
            Ok(out)
        } else {
            Err(self.failed(&args, &out))
        }
    }

    fn failed(&self, args: &[String], out: &Output) -> InitNetworkError {
        InitNetworkError::Command {
            command: render(&self.program, args),
            status: out
                .code
                .map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}")),
            stderr: explain(&out.stderr),
        }
    }

    fn chain_exists(&mut self) -> Result<bool, InitNetworkError> {
        // `-S CHAIN` fails only when the chain is missing (or the table cannot be read, which
        // the next command that must succeed reports).
        Ok(self.call(nat(&["-S", CHAIN]))?.ok())
    }

    fn jump_present(&mut self) -> Result<bool, InitNetworkError> {
        Ok(self.call(with_spec(&["-C", "OUTPUT"], &jump_spec()))?.ok())
    }

    /// Installs (or refreshes) the chain and the jump; running it twice leaves one set.
    pub fn install(&mut self, port: u16, uid: u32) -> Result<(), InitNetworkError> {
        if !self.chain_exists()? {
            self.must(nat(&["-N", CHAIN]))?;
        }
        self.must(nat(&["-F", CHAIN]))?;
        let uid = uid.to_string();
        self.must(nat(&[
            "-A",
            CHAIN,
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            "-j",
            "RETURN",
        ]))?;
        let to = format!("127.0.0.1:{port}");
        self.must(nat(&[
            "-A",
            CHAIN,
            "-p",
            "tcp",
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ]))?;
        if !self.jump_present()? {
            // Insert first so an earlier ACCEPT/RETURN in OUTPUT (a mesh's own rules) cannot
            // shadow it.
            self.must(with_spec(&["-I", "OUTPUT", "1"], &jump_spec()))?;
        }
        Ok(())
    }

    /// Removes every jump into our chain and the chain itself; a no-op when absent.
    pub fn remove(&mut self) -> Result<(), InitNetworkError> {
        // Bounded: each round deletes one copy of the jump.
        for _ in 0..64 {
            if !self.jump_present()? {
                break;
            }
            self.must(with_spec(&["-D", "OUTPUT"], &jump_spec()))?;
        }
        if self.chain_exists()? {
            self.must(nat(&["-F", CHAIN]))?;
            self.must(nat(&["-X", CHAIN]))?;
        }
        Ok(())
    }
}

/// Adds a hint to iptables' own message where it is cryptic.
fn explain(stderr: &str) -> String {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("permission denied") || lower.contains("operation not permitted") {
        format!(
            "{stderr} (the init container needs NET_ADMIN, plus NET_RAW for iptables-legacy, \
             and must run as uid 0)"
        )
    } else if lower.contains("table does not exist") || lower.contains("can't initialize") {
        format!(
            "{stderr} (the kernel lacks this backend's NAT support; try --backend nft or legacy)"
        )
    } else {
        stderr.to_owned()
    }
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
) -> Result<Tool, InitNetworkError> {
    if let Some(p) = explicit {
        return Ok(Tool {
            program: p.to_path_buf(),
            backend: "as given",
        });
    }
    let path_var = std::env::var_os("PATH");
    let nft = find_program("iptables-nft", path_var.clone());
    let legacy = find_program("iptables-legacy", path_var.clone());
    let plain = || find_program("iptables", path_var.clone());
    let missing = |looked_for: &str| InitNetworkError::ToolMissing {
        looked_for: looked_for.to_owned(),
    };
    match backend {
        Backend::Nft => nft
            .map(|program| Tool {
                program,
                backend: "nft",
            })
            .ok_or_else(|| missing("iptables-nft")),
        Backend::Legacy => legacy
            .map(|program| Tool {
                program,
                backend: "legacy",
            })
            .ok_or_else(|| missing("iptables-legacy")),
        Backend::Auto => {
            let mut candidates: Vec<(PathBuf, &'static str)> = Vec::new();
            if let Some(p) = nft {
                candidates.push((p, "nft"));
            }
            if let Some(p) = legacy {
                candidates.push((p, "legacy"));
            }
            if candidates.is_empty() {
                return plain()
                    .map(|program| Tool {
                        program,
                        backend: "default",
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
                    backend: "default",
                },
                |(program, backend, _)| Tool {
                    program: program.clone(),
                    backend,
                },
            ))
        }
    }
}

/// Effective capabilities of this process, from `/proc/self/status` (`None` if unreadable).
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

fn check_caps(caps: Option<u64>, backend: &str) -> Result<(), InitNetworkError> {
    let Some(caps) = caps else { return Ok(()) };
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    if !has(CAP_NET_ADMIN) {
        return Err(InitNetworkError::MissingCapability {
            extra: if backend == "legacy" {
                " (and NET_RAW for iptables-legacy)"
            } else {
                ""
            },
            caps: if backend == "legacy" {
                "NET_ADMIN, NET_RAW"
            } else {
                "NET_ADMIN"
            },
        });
    }
    if backend == "legacy" && !has(CAP_NET_RAW) {
        return Err(InitNetworkError::MissingCapability {
            extra: " and, for iptables-legacy, NET_RAW",
            caps: "NET_ADMIN, NET_RAW",
        });
    }
    Ok(())
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (backend {})", self.program.display(), self.backend)
    }
}

/// Runs `init-network` with the given arguments and runner; returns what was done.
///
/// `caps` are the effective capabilities to check first (`None`: do not check).
pub fn execute(
    args: &InitNetworkArgs,
    runner: &mut impl Runner,
    caps: Option<u64>,
) -> Result<String, InitNetworkError> {
    let tool = choose_tool(runner, args.backend, args.iptables.as_deref())?;
    check_caps(caps, tool.backend)?;
    let mut rules = Rules::new(runner, tool.program.clone());
    if args.remove {
        rules.remove()?;
        Ok(format!("removed the {CHAIN} NAT rules with {tool}"))
    } else {
        rules.install(args.port, args.uid)?;
        Ok(format!(
            "TCP to {IMDS_ADDR}:{IMDS_PORT} now goes to 127.0.0.1:{} except from uid {} ({tool})",
            args.port, args.uid
        ))
    }
}

/// Entry point of the `init-network` subcommand.
pub fn run(args: InitNetworkArgs) -> ExitCode {
    let result = if args.dry_run {
        execute(&args, &mut DryRunner, None)
    } else {
        execute(&args, &mut ProcessRunner, effective_caps())
    };
    match result {
        Ok(msg) => {
            if !args.dry_run {
                eprintln!("identity-sidecar init-network: {msg}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("identity-sidecar init-network: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A fake iptables that keeps the nat rules in memory, like the real one does.
    #[derive(Default)]
    struct FakeTables {
        chains: HashSet<String>,
        rules: Vec<(String, Vec<String>)>,
        log: Vec<Vec<String>>,
        deny: bool,
    }

    impl Runner for FakeTables {
        fn run(&mut self, _program: &Path, args: &[String]) -> Result<Output, InitNetworkError> {
            self.log.push(args.to_vec());
            let res = |code: i32, stdout: String, stderr: &str| {
                Ok(Output {
                    code: Some(code),
                    stdout,
                    stderr: stderr.to_owned(),
                })
            };
            if self.deny {
                return res(
                    4,
                    String::new(),
                    "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)",
                );
            }
            assert_eq!(&args[..2], ["-t", "nat"]);
            let op = args[2].as_str();
            let chain = args.get(3).cloned().unwrap_or_default();
            let spec: Vec<String> = args.iter().skip(4).cloned().collect();
            let builtin = chain == "OUTPUT";
            let exists = builtin || self.chains.contains(&chain);
            match op {
                "-S" if args.len() == 3 => {
                    let mut s = String::from("-P OUTPUT ACCEPT\n");
                    for c in &self.chains {
                        s += &format!("-N {c}\n");
                    }
                    for (c, r) in &self.rules {
                        s += &format!("-A {c} {}\n", r.join(" "));
                    }
                    res(0, s, "")
                }
                "-S" => res(if exists { 0 } else { 1 }, String::new(), ""),
                "-N" if exists => res(1, String::new(), "Chain already exists."),
                "-N" => {
                    self.chains.insert(chain);
                    res(0, String::new(), "")
                }
                "-F" => {
                    self.rules.retain(|(c, _)| *c != chain);
                    res(if exists { 0 } else { 1 }, String::new(), "")
                }
                "-X" => {
                    self.chains.remove(&chain);
                    res(0, String::new(), "")
                }
                "-A" => {
                    self.rules.push((chain, spec));
                    res(0, String::new(), "")
                }
                "-I" => {
                    let spec: Vec<String> = args.iter().skip(5).cloned().collect();
                    self.rules.insert(0, (chain, spec));
                    res(0, String::new(), "")
                }
                "-C" => {
                    let found = self.rules.iter().any(|(c, r)| *c == chain && *r == spec);
                    res(if found { 0 } else { 1 }, String::new(), "Bad rule")
                }
                "-D" => match self
                    .rules
                    .iter()
                    .position(|(c, r)| *c == chain && *r == spec)
                {
                    Some(i) => {
                        self.rules.remove(i);
                        res(0, String::new(), "")
                    }
                    None => res(1, String::new(), "Bad rule"),
                },
                other => panic!("unexpected op {other}"),
            }
        }
    }

    fn install(t: &mut FakeTables) {
        Rules::new(t, PathBuf::from("iptables"))
            .install(8000, 1501)
            .expect("install");
    }

    #[test]
    fn install_adds_the_jump_the_exclusion_and_the_dnat() {
        let mut t = FakeTables::default();
        install(&mut t);
        let rules: Vec<String> = t
            .rules
            .iter()
            .map(|(c, r)| format!("{c} {}", r.join(" ")))
            .collect();
        assert_eq!(
            rules,
            [
                "OUTPUT -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j IDENTITY_SIDECAR",
                "IDENTITY_SIDECAR -m owner --uid-owner 1501 -j RETURN",
                "IDENTITY_SIDECAR -p tcp -j DNAT --to-destination 127.0.0.1:8000",
            ]
        );
    }

    #[test]
    fn installing_twice_leaves_one_set_of_rules() {
        let mut t = FakeTables::default();
        install(&mut t);
        let once = t.rules.clone();
        install(&mut t);
        assert_eq!(t.rules, once);
    }

    #[test]
    fn install_with_another_port_replaces_the_dnat() {
        let mut t = FakeTables::default();
        install(&mut t);
        Rules::new(&mut t, PathBuf::from("iptables"))
            .install(9000, 42)
            .expect("install");
        assert_eq!(t.rules.len(), 3);
        assert!(
            t.rules
                .iter()
                .any(|(_, r)| r.contains(&"127.0.0.1:9000".to_owned()))
        );
        assert!(t.rules.iter().any(|(_, r)| r.contains(&"42".to_owned())));
    }

    #[test]
    fn remove_restores_an_empty_table_and_is_idempotent() {
        let mut t = FakeTables::default();
        install(&mut t);
        // A duplicate jump left by some earlier tool goes too.
        t.rules.push(("OUTPUT".into(), jump_spec()));
        Rules::new(&mut t, PathBuf::from("iptables"))
            .remove()
            .expect("remove");
        assert!(t.rules.is_empty());
        assert!(t.chains.is_empty());
        Rules::new(&mut t, PathBuf::from("iptables"))
            .remove()
            .expect("remove twice");
    }

    #[test]
    fn permission_denied_is_explained() {
        let mut t = FakeTables {
            deny: true,
            ..FakeTables::default()
        };
        let err = Rules::new(&mut t, PathBuf::from("iptables"))
            .install(8000, 1501)
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("NET_ADMIN"), "{msg}");
        assert!(msg.contains("iptables -t nat -N IDENTITY_SIDECAR"), "{msg}");
    }

    #[test]
    fn missing_net_admin_is_reported_before_running_anything() {
        let err = check_caps(Some(0), "nft").expect_err("no caps");
        assert!(err.to_string().contains("capabilities.add: [NET_ADMIN]"));
        let err = check_caps(Some(1 << CAP_NET_ADMIN), "legacy").expect_err("no NET_RAW");
        assert!(err.to_string().contains("NET_RAW"));
        check_caps(Some(1 << CAP_NET_ADMIN), "nft").expect("nft needs NET_ADMIN only");
        check_caps(None, "nft").expect("unknown caps: let iptables decide");
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
