//! The NAT rules that send a pod's IMDS traffic (`169.254.169.254:80`) to the sidecar, and the
//! iptables programs that write them. The `init-network` command ([`crate::cmd::init_network`])
//! only picks the options; everything about the rules lives here.
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
//! - [`rules`]: the rule set and how it is installed (idempotently) and removed;
//! - [`tool`]: which iptables program (`iptables-nft` or `iptables-legacy`) writes it, and the
//!   capabilities each needs.
//!
//! Rules are written by running the `iptables` tool with an explicit argv (no shell), through a
//! [`Runner`], so the rule logic is testable without root. IPv4 only: IMDS has no IPv6 address.
use std::path::Path;

pub mod rules;
pub mod tool;

pub use rules::Rules;
pub use tool::{Backend, Tool, choose_tool};

/// The user id the sidecar image runs as, and so the one whose traffic is not redirected.
///
/// 10501: at or above 10000, clear of the uids a node's own accounts use (checkov CKV_K8S_40,
/// "containers should run as a high UID"), and of the high uids images commonly pick (10001,
/// 65532 distroless `nonroot`, 65534 `nobody`): an app container running as this uid would
/// escape the redirect. Until 0.1 it was 1501, the Azure Workload Identity proxy's uid; mesh
/// exclusions written for that proxy need this uid instead (docs/kubernetes.md).
pub const SIDECAR_UID: u32 = 10501;
/// Our own chain in the `nat` table.
pub const CHAIN: &str = "IDENTITY_SIDECAR";

/// The IMDS address and port that get redirected (IPv4 only: IMDS has no IPv6 address).
pub const IMDS_ADDR: &str = "169.254.169.254";
/// See [`IMDS_ADDR`].
pub const IMDS_PORT: u16 = 80;

/// What went wrong, in words that say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
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
    pub(crate) fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs one iptables command. Abstracted so the rule logic is testable without root.
pub trait Runner {
    fn run(&mut self, program: &Path, args: &[String]) -> Result<Output, NetfilterError>;
}

/// Runs the real program with the given argv (no shell).
pub struct ProcessRunner;

impl Runner for ProcessRunner {
    fn run(&mut self, program: &Path, args: &[String]) -> Result<Output, NetfilterError> {
        let out = std::process::Command::new(program)
            .args(args)
            // A pipe closed at once rather than /dev/null: works where /dev is not mounted.
            .stdin(std::process::Stdio::piped())
            .output()
            .map_err(|source| NetfilterError::Spawn {
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
pub struct DryRunner;

impl Runner for DryRunner {
    fn run(&mut self, program: &Path, args: &[String]) -> Result<Output, NetfilterError> {
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

pub(crate) fn render(program: &Path, args: &[String]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// A fake iptables for unit tests: keeps the nat rules in memory, like the real one does.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::HashSet;
    use std::path::Path;

    use super::{NetfilterError, Output, Runner};

    /// A fake iptables that keeps the nat rules in memory, like the real one does.
    #[derive(Default)]
    pub(crate) struct FakeTables {
        pub chains: HashSet<String>,
        pub rules: Vec<(String, Vec<String>)>,
        pub log: Vec<Vec<String>>,
        pub deny: bool,
    }

    impl Runner for FakeTables {
        fn run(&mut self, _program: &Path, args: &[String]) -> Result<Output, NetfilterError> {
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
}
