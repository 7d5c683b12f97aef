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
//! The rules themselves, their install and removal and the choice of iptables program live in
//! [`crate::netfilter`]; this file holds the flags and runs them. `--dry-run` prints the
//! commands instead of running them, and `--remove` takes the rules out again.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::netfilter::tool::{check_caps, effective_caps};
use crate::netfilter::{
    Backend, CHAIN, DryRunner, IMDS_ADDR, IMDS_PORT, NetfilterError, ProcessRunner, Rules, Runner,
    SIDECAR_UID, choose_tool,
};

/// The sidecar's default port on `127.0.0.1` (same as `serve`'s default listen address).
pub const DEFAULT_PORT: u16 = 8000;
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

/// Runs `init-network` with the given arguments and runner; returns what was done.
///
/// `caps` are the effective capabilities (`None`: do not check). They are checked once the program
/// is chosen and before any rule is written; with `--backend auto`, choosing runs the read-only
/// `iptables -t nat -S` of each candidate first.
pub fn execute(
    args: &InitNetworkArgs,
    runner: &mut impl Runner,
    caps: Option<u64>,
) -> Result<String, NetfilterError> {
    let tool = choose_tool(runner, args.backend, args.iptables.as_deref())?;
    check_caps(caps, tool.kind)?;
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
    use crate::netfilter::fake::FakeTables;

    fn args() -> InitNetworkArgs {
        InitNetworkArgs {
            port: DEFAULT_PORT,
            uid: SIDECAR_UID,
            remove: false,
            backend: Backend::Nft,
            iptables: Some(PathBuf::from("/x/iptables")),
            dry_run: false,
        }
    }

    #[test]
    fn missing_net_admin_stops_before_any_iptables_command_runs() {
        let mut t = FakeTables::default();
        let err = execute(&args(), &mut t, Some(0)).expect_err("no NET_ADMIN");
        assert!(err.to_string().contains("NET_ADMIN"), "{err}");
        assert!(t.log.is_empty(), "ran {:?}", t.log);
    }

    #[test]
    fn with_net_admin_the_rules_are_installed() {
        let mut t = FakeTables::default();
        let msg = execute(&args(), &mut t, Some(1 << 12)).expect("installed");
        assert!(msg.contains("127.0.0.1:8000"), "{msg}");
        assert_eq!(t.rules.len(), 3);
    }
}
