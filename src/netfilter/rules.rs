//! The rule set: one chain of our own in the `nat` table and one jump into it from `OUTPUT`.
//! Installing is idempotent (the chain is created if missing, then flushed and refilled; the jump
//! is added only when `-C` does not find it), and removing takes out every jump and the chain.
use std::path::PathBuf;

use super::{CHAIN, IMDS_ADDR, IMDS_PORT, NetfilterError, Output, Runner, render};

pub(crate) fn nat(args: &[&str]) -> Vec<String> {
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

/// Applies rules with one iptables program.
pub struct Rules<'a, R: Runner> {
    runner: &'a mut R,
    program: PathBuf,
}

impl<'a, R: Runner> Rules<'a, R> {
    pub fn new(runner: &'a mut R, program: PathBuf) -> Self {
        Self { runner, program }
    }

    fn call(&mut self, args: Vec<String>) -> Result<Output, NetfilterError> {
        self.runner.run(&self.program, &args)
    }

    fn must(&mut self, args: Vec<String>) -> Result<Output, NetfilterError> {
        let out = self.call(args.clone())?;
        if out.ok() {
            Ok(out)
        } else {
            Err(self.failed(&args, &out))
        }
    }

    fn failed(&self, args: &[String], out: &Output) -> NetfilterError {
        NetfilterError::Command {
            command: render(&self.program, args),
            status: out
                .code
                .map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}")),
            stderr: explain(&out.stderr),
        }
    }

    fn chain_exists(&mut self) -> Result<bool, NetfilterError> {
        // `-S CHAIN` fails only when the chain is missing (or the table cannot be read, which
        // the next command that must succeed reports).
        Ok(self.call(nat(&["-S", CHAIN]))?.ok())
    }

    fn jump_present(&mut self) -> Result<bool, NetfilterError> {
        Ok(self.call(with_spec(&["-C", "OUTPUT"], &jump_spec()))?.ok())
    }

    /// Installs (or refreshes) the chain and the jump; running it twice leaves one set.
    pub fn install(&mut self, port: u16, uid: u32) -> Result<(), NetfilterError> {
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
    pub fn remove(&mut self) -> Result<(), NetfilterError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::fake::FakeTables;

    fn install(t: &mut FakeTables) {
        Rules::new(t, PathBuf::from("iptables"))
            .install(8000, 10501)
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
                "IDENTITY_SIDECAR -m owner --uid-owner 10501 -j RETURN",
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
            .install(8000, 10501)
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("NET_ADMIN"), "{msg}");
        assert!(msg.contains("iptables -t nat -N IDENTITY_SIDECAR"), "{msg}");
    }
}
