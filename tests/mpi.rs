//! Data-parallel training under MPI, through the binary and `mpirun` (Open MPI): N ranks
//! against one process on the same global batch, resuming with another number of ranks, a stop
//! asked of the launcher, a rank killed, ranks that disagree. MPI's traffic is forced onto TCP
//! over loopback, so it crosses the network stack as between machines, and in one test onto a
//! veth link between two network namespaces, one rank in each, as two hosts.
//!
//! Built with `--features mpi` (scripts/mpi-check.sh); without it, only the refusal of a launch
//! of several ranks is tested.

mod common;

/// A binary without MPI refuses to be one of several ranks (it would train N separate runs).
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_a_launch_of_several_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tiny.txt");
    std::fs::write(&data, common::tiny_text()).unwrap();
    let o = common::charrnn_command(&["train", "--data", data.to_str().unwrap(), "--device", "cpu"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = common::stderr(&o);
    assert!(err.contains("one of 2 MPI ranks") && err.contains("--features mpi"), "{err}");
    assert!(!dir.path().join("checkpoints").exists(), "nothing is written");
}

#[cfg(feature = "mpi")]
mod under_mpi {
    use std::path::Path;
    use std::process::{Command, Output};

    use super::common;

    /// The tests' tiny run (34 batches of 4 sequences per epoch) with `more` flags.
    fn tiny_run(dir: &Path, name: &str, more: &[&str]) -> Vec<String> {
        let mut args = common::server::tiny_train_args(dir, name, "3");
        args.extend(more.iter().map(|s| s.to_string()));
        args
    }

    /// `mpirun -n ranks charrnn args…`, its traffic on TCP over loopback.
    fn mpirun(ranks: usize, args: &[String]) -> Command {
        let mut command = Command::new("mpirun");
        command
            .args([
                "--allow-run-as-root",
                "--oversubscribe",
                "--mca",
                "btl",
                "tcp,self",
                "--mca",
                "btl_tcp_if_include",
                "lo",
            ])
            .args(["-n", &ranks.to_string(), env!("CARGO_BIN_EXE_charrnn")])
            .args(args);
        command
    }

    /// The binary alone, as one process.
    fn alone(args: &[String]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_charrnn"));
        command.args(args);
        command
    }

    fn succeeded(o: Output) -> String {
        let err = common::stderr(&o);
        assert!(o.status.success(), "{err}");
        err
    }

    /// The validation losses `metrics.jsonl` recorded, epoch by epoch.
    fn val_losses(dir: &Path) -> Vec<f64> {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["kind"] == "epoch")
            .map(|r| r["val_loss"].as_f64().unwrap())
            .collect()
    }

    /// Two ranks (and three, whose shares of 4 rows are 1, 1 and 2) train what one process trains
    /// on the same global batch: the same dropout masks, clipping of the global gradient, the same
    /// validation losses; rank 0 alone writes and speaks.
    #[test]
    fn ranks_train_what_one_process_trains_on_the_same_global_batch() {
        let dir = tempfile::tempdir().unwrap();
        let more = ["--epochs", "2", "--dropout", "0.3", "--clip-grad-norm", "1"];
        succeeded(alone(&tiny_run(dir.path(), "one", &more)).output().unwrap());
        let one = dir.path().join("one");
        for ranks in [2, 3] {
            let name = format!("ranks{ranks}");
            let err = succeeded(mpirun(ranks, &tiny_run(dir.path(), &name, &more)).output().unwrap());
            assert_eq!(err.matches("Epoch 2 Loss").count(), 1, "one log, rank 0's:\n{err}");
            assert!(err.contains(&format!("rank 0 of {ranks}")), "{err}");
            let these = dir.path().join(&name);
            assert_eq!(common::file_names(&these), common::file_names(&one), "the same files, written once");
            let d = common::relative_difference(
                &one.join("ckpt_2.safetensors"),
                &these.join("ckpt_2.safetensors"),
            );
            eprintln!("{ranks} ranks against one process after 2 epochs: relative difference {d:.3e}");
            assert!(d < 1e-5, "{ranks} ranks: relative difference {d:e}");
            for (a, b) in val_losses(&one).iter().zip(val_losses(&these)) {
                assert!((a - b).abs() < 1e-5 * a, "validation {a} against {b}");
            }
        }
    }

    /// A run stopped mid-epoch by two ranks resumes on two bit for bit, and on one process within
    /// the sums' rounding of what one process trains uninterrupted.
    #[test]
    fn a_run_saved_by_two_ranks_resumes_with_one_or_two() {
        let dir = tempfile::tempdir().unwrap();
        let run =
            |name: &str, more: &[&str]| tiny_run(dir.path(), name, &[&["--epochs", "2"], more].concat());
        succeeded(mpirun(2, &run("whole2", &[])).output().unwrap());
        succeeded(alone(&run("whole1", &[])).output().unwrap());
        for (name, resumed_on) in [("again2", 2), ("again1", 1)] {
            let err = succeeded(mpirun(2, &run(name, &["--max-steps", "45"])).output().unwrap());
            assert!(err.contains("reached --max-steps 45"), "{err}");
            let interrupted = dir.path().join(name).join("interrupted.safetensors");
            assert!(interrupted.exists(), "{err}");
            let resume = ["train".to_string(), "--resume".into(), interrupted.to_string_lossy().into_owned()];
            let err = match resumed_on {
                2 => succeeded(mpirun(2, &resume).output().unwrap()),
                _ => succeeded(alone(&resume).output().unwrap()),
            };
            assert!(err.contains("resuming") && err.contains("epoch 2 batch 11"), "{err}");
            let last = dir.path().join(name).join("ckpt_2.safetensors");
            if resumed_on == 2 {
                assert_eq!(
                    common::tensor_bytes(&last),
                    common::tensor_bytes(&dir.path().join("whole2/ckpt_2.safetensors")),
                    "bit for bit"
                );
            } else {
                let d = common::relative_difference(&dir.path().join("whole1/ckpt_2.safetensors"), &last);
                eprintln!(
                    "saved by 2 ranks, resumed on 1, against 1 throughout: relative difference {d:.3e}"
                );
                assert!(d < 1e-5, "relative difference {d:e}");
            }
        }
    }

    /// Ctrl-C to the launcher (which sends SIGTERM to every rank) stops every rank at the same
    /// step with one resumable checkpoint, from which two ranks go on exactly as if never stopped.
    #[test]
    fn a_stop_asked_of_the_launcher_stops_every_rank_at_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let stopped = dir.path().join("stopped");
        let mut child = mpirun(2, &tiny_run(dir.path(), "stopped", &["--epochs", "1000"]))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(
            &mut child,
            || stopped.join("ckpt_10.safetensors").exists(),
            60,
            "the tenth epoch's checkpoint",
        );
        // SAFETY: kill(2) on the launcher's pid, a child of this process not yet waited for.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        let o = child.wait_with_output().unwrap();
        let err = common::stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert_eq!(err.matches("; saved ").count(), 1, "one save, said once:\n{err}");
        let interrupted = stopped.join("interrupted.safetensors");
        let epoch = err
            .lines()
            .find_map(|l| l.strip_prefix("stopped in epoch "))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("where it stopped:\n{err}"));
        let until = (epoch + 1).to_string();
        let resume =
            ["train", "--resume", interrupted.to_str().unwrap(), "--epochs", &until].map(String::from);
        succeeded(mpirun(2, &resume).output().unwrap());
        succeeded(mpirun(2, &tiny_run(dir.path(), "straight", &["--epochs", &until])).output().unwrap());
        let name = format!("ckpt_{until}.safetensors");
        assert_eq!(
            common::tensor_bytes(&stopped.join(&name)),
            common::tensor_bytes(&dir.path().join("straight").join(&name)),
            "bit for bit"
        );
    }

    /// A rank killed mid-run ends the job within seconds with the launcher's error, and every file
    /// left is whole: each checkpoint loads and the run resumes from the folder.
    #[test]
    fn a_killed_rank_ends_the_job_quickly_and_damages_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("killed");
        let mut child = mpirun(2, &tiny_run(dir.path(), "killed", &["--epochs", "100000"]))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(
            &mut child,
            || folder.join("ckpt_5.safetensors").exists(),
            60,
            "the fifth epoch's checkpoint",
        );
        let rank1 = rank_pid(child.id(), 1).expect("rank 1's process");
        let killed = std::time::Instant::now();
        // SAFETY: kill(2) with SIGKILL on a process this test's launcher started.
        assert_eq!(unsafe { libc::kill(rank1, libc::SIGKILL) }, 0);
        let o = child.wait_with_output().unwrap();
        let took = killed.elapsed();
        let err = common::stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert!(took.as_secs() < 15, "the job took {took:?} to end");
        assert!(err.contains("rank 1") && err.contains("signal 9"), "the launcher names the rank:\n{err}");
        eprintln!("the job ended {took:?} after rank 1 was killed");
        for name in common::file_names(&folder)
            .iter()
            .filter(|n| n.ends_with(".safetensors") && !n.contains(".optim."))
        {
            let path = folder.join(name);
            succeeded(common::charrnn_command(&["info", path.to_str().unwrap()]).output().unwrap());
        }
        let err = succeeded(
            common::charrnn_command(&["train", "--resume", folder.to_str().unwrap(), "--max-steps", "3"])
                .output()
                .unwrap(),
        );
        assert!(err.contains("resuming"), "{err}");
    }

    /// Ranks started with different settings are refused before the first step, on every rank.
    #[test]
    fn ranks_that_disagree_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // MPMD: one rank with seed 3, one with seed 4.
        let mut first = tiny_run(dir.path(), "mixed", &["--epochs", "1"]);
        let second: Vec<String> =
            first.iter().map(|a| if a == "3" { "4".to_string() } else { a.clone() }).collect();
        first.extend([":".into(), "-n".into(), "1".into(), env!("CARGO_BIN_EXE_charrnn").into()]);
        first.extend(second);
        let o = mpirun(1, &first).output().unwrap();
        let err = common::stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert!(err.contains("differ between the 2 ranks"), "{err}");
        assert!(!dir.path().join("mixed").join("ckpt_1.safetensors").exists());

        let o = mpirun(5, &tiny_run(dir.path(), "small", &["--epochs", "1"])).output().unwrap();
        let err = common::stderr(&o);
        assert!(!o.status.success() && err.contains("--batch-size 4 is the global batch"), "{err}");
    }

    /// Two hosts: two network namespaces joined by a veth pair, one rank in each, MPI's launcher
    /// reaching the second through an agent that enters its namespace (where ssh would log in).
    /// They train what one process trains; the gradients cross the veth link.
    #[test]
    fn two_hosts_in_network_namespaces_train_what_one_process_trains() {
        let Some(hosts) = Hosts::new() else {
            assert!(
                std::env::var_os("CHARRNN_REQUIRE_NETNS").is_none(),
                "network namespaces are required but unavailable"
            );
            eprintln!("skipped: network namespaces need root and iproute2");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let more = ["--epochs", "2", "--dropout", "0.3"];
        succeeded(alone(&tiny_run(dir.path(), "one", &more)).output().unwrap());
        let agent = dir.path().join("enter-host");
        let script = format!(
            "#!/bin/sh\n# mpirun's remote shell: HOST COMMAND... runs COMMAND in HOST's namespace\ncase $1 in\n  {}) ns={} ;;\n  {}) ns={} ;;\n  *) echo \"unknown host $1\" >&2; exit 1 ;;\nesac\nshift\nexec ip netns exec $ns sh -c \"$*\"\n",
            hosts.address[0], hosts.namespace[0], hosts.address[1], hosts.namespace[1]
        );
        std::fs::write(&agent, script).unwrap();
        std::process::Command::new("chmod").arg("755").arg(&agent).status().unwrap();
        let subnet = format!("{}/24", hosts.subnet);
        let o = Command::new("ip")
            .args(["netns", "exec", &hosts.namespace[0], "mpirun", "--allow-run-as-root", "--oversubscribe"])
            .args(["--host", &format!("{},{}", hosts.address[0], hosts.address[1]), "-n", "2"])
            .args(["--mca", "plm_rsh_agent", agent.to_str().unwrap()])
            .args([
                "--mca",
                "btl",
                "tcp,self",
                "--mca",
                "btl_tcp_if_include",
                &subnet,
                "--mca",
                "oob_tcp_if_include",
                &subnet,
            ])
            // The two "hosts" share this machine's cores: a rank waiting in a collective yields them.
            .args(["--mca", "mpi_yield_when_idle", "1"])
            .arg(env!("CARGO_BIN_EXE_charrnn"))
            .args(tiny_run(dir.path(), "hosts", &more))
            .output()
            .unwrap();
        succeeded(o);
        let crossed = hosts.received_bytes(1);
        let last = dir.path().join("hosts/ckpt_2.safetensors");
        let d = common::relative_difference(&dir.path().join("one/ckpt_2.safetensors"), &last);
        eprintln!(
            "two hosts against one process: relative difference {d:.3e}; {crossed} bytes reached the second host"
        );
        assert!(d < 1e-5, "relative difference {d:e}");
        // Each of the 68 steps sums every gradient (and the loss): a rank of two receives at
        // least the other's half of the sums and the result's other half, the whole buffer.
        let gradient_bytes: usize =
            4 + common::tensor_bytes(&last).iter().map(|(_, v)| v.len()).sum::<usize>();
        assert!(
            crossed as usize > 68 * gradient_bytes,
            "{crossed} bytes crossed the link, {gradient_bytes} per step"
        );
    }

    /// Two network namespaces with a veth pair between them, removed when dropped.
    struct Hosts {
        namespace: [String; 2],
        address: [String; 2],
        subnet: String,
        link: [String; 2],
    }

    impl Hosts {
        /// None where namespaces cannot be made (not root, no iproute2).
        fn new() -> Option<Hosts> {
            let id = std::process::id() % 100_000;
            let subnet = format!("10.{}.{}.0", 100 + id % 100, id % 250);
            let base = subnet.trim_end_matches(".0").to_string();
            let hosts = Hosts {
                namespace: [format!("charrnn-a{id}"), format!("charrnn-b{id}")],
                address: [format!("{base}.1"), format!("{base}.2")],
                subnet,
                link: [format!("cra{id}"), format!("crb{id}")],
            };
            let ip = |args: &[&str]| Command::new("ip").args(args).status().is_ok_and(|s| s.success());
            let [a, b] = [&hosts.namespace[0], &hosts.namespace[1]];
            let [la, lb] = [&hosts.link[0], &hosts.link[1]];
            if !ip(&["netns", "add", a]) {
                return None;
            }
            let ok = ip(&["netns", "add", b])
                && ip(&["link", "add", la, "type", "veth", "peer", "name", lb])
                && ip(&["link", "set", la, "netns", a])
                && ip(&["link", "set", lb, "netns", b])
                && ip(&["-n", a, "addr", "add", &format!("{}/24", hosts.address[0]), "dev", la])
                && ip(&["-n", b, "addr", "add", &format!("{}/24", hosts.address[1]), "dev", lb])
                && [a, b].iter().all(|ns| ip(&["-n", ns, "link", "set", "lo", "up"]))
                && ip(&["-n", a, "link", "set", la, "up"])
                && ip(&["-n", b, "link", "set", lb, "up"]);
            ok.then_some(hosts)
        }

        /// Bytes host `i`'s end of the link has received.
        fn received_bytes(&self, i: usize) -> u64 {
            let o = Command::new("ip")
                .args(["-n", &self.namespace[i], "-s", "-j", "link", "show", &self.link[i]])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            v[0]["stats64"]["rx"]["bytes"].as_u64().unwrap()
        }
    }

    impl Drop for Hosts {
        fn drop(&mut self) {
            for ns in &self.namespace {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }

    /// Waits up to `seconds` for `done` while `job` runs, failing with `what`.
    fn wait_for(job: &mut std::process::Child, done: impl Fn() -> bool, seconds: u64, what: &str) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        while !done() {
            assert!(std::time::Instant::now() < until, "no {what} after {seconds} s");
            if let Some(status) = job.try_wait().unwrap() {
                panic!("the job ended ({status}) before {what}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The pid of the launcher's child that is MPI rank `rank`.
    fn rank_pid(launcher: u32, rank: usize) -> Option<i32> {
        let want = format!("OMPI_COMM_WORLD_RANK={rank}");
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let parent =
                    stat.rsplit(')').next().and_then(|s| s.split_whitespace().nth(1)?.parse::<u32>().ok());
                let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                parent == Some(launcher) && env.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
            })
    }
}
