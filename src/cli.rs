//! The command-line frame both binaries share (`identity-sidecar` and `identity-sidecar-webhook`):
//! a name, the version line, a one-line description and a required subcommand. Each binary keeps
//! its own subcommand enum, one variant per job, with the flags next to their definition.
use clap::Subcommand;

/// Parses the process's arguments into one of `C`'s subcommands.
pub fn try_parse<C: Subcommand>(name: &'static str, about: &'static str) -> Result<C, clap::Error> {
    let frame = clap::Command::new(name)
        .version(crate::build_info::version_line())
        .about(about)
        .subcommand_required(true)
        .arg_required_else_help(true);
    let mut matches = C::augment_subcommands(frame).try_get_matches()?;
    C::from_arg_matches_mut(&mut matches)
}
