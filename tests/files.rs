//! Files shared between processes and users: a run's folder locked for its lifetime, token
//! caches checked against their checksum and kept private, downloads that do not follow
//! redirects unasked, optimizer states whose position makes no sense.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{charrnn_command, stderr};

const SMALL: &[&str] =
    &["--batch-size", "4", "--seq-len", "20", "--embedding-dim", "8", "--rnn-units", "16", "--device", "cpu"];

fn text_file(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.txt");
    std::fs::write(&path, common::tiny_text()).unwrap();
    path
}

/// `train` into `ck` on `data` with the small settings and `extra`, its caches in `cache`.
fn train(data: &Path, ck: &Path, cache: &Path, extra: &[&str]) -> Command {
    let mut args = vec!["train", "--data", data.to_str().unwrap(), "--checkpoint-dir", ck.to_str().unwrap()];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    let mut command = charrnn_command(&args);
    command.env("CHARRNN_CACHE_DIR", cache);
    command
}

fn run(mut command: Command) -> Output {
    command.output().unwrap()
}

/// A process started with its stderr read line by line; killed when dropped.
struct Running {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(mut command: Command) -> Running {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        Running { child, lines }
    }

    fn wait_for(&self, needle: &str) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let line = (self.lines.recv_timeout(until.saturating_duration_since(Instant::now())))
                .unwrap_or_else(|_| panic!("no line with {needle:?}"));
            if line.contains(needle) {
                return;
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// (Item 11.) Two runs started together in one empty folder: one runs, the other is refused. While a
/// run lives, a second run, a resume and an overwrite there are refused naming it; once it is
/// killed outright its folder is free again. Only temporaries whose writer is gone are removed.
#[test]
fn a_run_holds_its_folder_for_its_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cache) = (text_file(dir.path()), dir.path().join("cache"));
    let ck = dir.path().join("ck");
    let racers: Vec<Child> = (0..2)
        .map(|seed| {
            let mut c = train(&data, &ck, &cache, &["--epochs", "3", "--seed", &seed.to_string()]);
            c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let outcomes: Vec<Output> = racers.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let won: Vec<&Output> = outcomes.iter().filter(|o| o.status.success()).collect();
    assert_eq!(won.len(), 1, "{:?}", outcomes.iter().map(stderr).collect::<Vec<_>>());
    let lost = outcomes.iter().find(|o| !o.status.success()).unwrap();
    let why = stderr(lost);
    assert!(
        why.contains("in use by another training run") || why.contains("already holds a training run"),
        "{why}"
    );
    assert!(ck.join("ckpt_3.safetensors").exists());

    let live_dir = dir.path().join("live");
    let live = Running::start(train(
        &data,
        &live_dir,
        &cache,
        &["--epochs", "100000", "--save-every", "1", "--seed", "1"],
    ));
    live.wait_for("saved");
    let pid = live.child.id().to_string();
    for extra in [vec!["--resume"], vec!["--overwrite"], vec![]] {
        let o = run(train(&data, &live_dir, &cache, &extra));
        let why = stderr(&o);
        assert!(!o.status.success(), "{extra:?} ran beside the live run");
        assert!(why.contains("in use by another training run") && why.contains(&pid), "{extra:?}: {why}");
    }
    assert!(live_dir.join("ckpt_1.safetensors").exists(), "the live run's files were touched");
    drop(live); // killed outright: no stale lock
    let o = run(train(&data, &live_dir, &cache, &["--resume", "--epochs", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));

    // A temporary a live process is writing stays; a dead writer's goes.
    let mine = live_dir.join(format!(".charrnn-{}-inflight.tmp", std::process::id()));
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = live_dir.join(format!(".charrnn-{}-leftover.tmp", gone.id()));
    std::fs::write(&mine, b"half").unwrap();
    std::fs::write(&dead, b"half").unwrap();
    let o = run(train(&data, &live_dir, &cache, &["--resume", "--epochs", "3"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(mine.exists(), "a live writer's temporary was removed");
    assert!(!dead.exists(), "a dead writer's temporary was kept");
}

/// The token cache file in `cache`.
fn cache_file(cache: &Path) -> PathBuf {
    let mut found: Vec<PathBuf> = (std::fs::read_dir(cache).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tokens"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

fn eval(ck: &Path, data: &Path, cache: &Path) -> Output {
    let args = ["eval", "--checkpoint", ck.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"];
    let mut command = charrnn_command(&args);
    command.env("CHARRNN_CACHE_DIR", cache);
    command.output().unwrap()
}

/// (Item 12.) A cache whose ids were rewritten in place (header untouched) is caught by its checksum
/// and rebuilt, with the reason; two processes building one cache at once both end with a
/// valid one.
#[test]
fn a_tampered_cache_is_caught_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cache) = (text_file(dir.path()), dir.path().join("cache"));
    let ck = dir.path().join("ck");
    assert!(run(train(&data, &ck, &cache, &["--epochs", "1", "--seed", "1"])).status.success());
    let honest = eval(&ck, &data, &cache);
    assert!(honest.status.success(), "{}", stderr(&honest));
    let path = cache_file(&cache);
    let mut bytes = std::fs::read(&path).unwrap();
    let header = 16 + u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let start = header.div_ceil(8) * 8;
    let vocab = bytes[start..].iter().max().unwrap() + 1;
    for b in &mut bytes[start..] {
        *b = (*b + 1) % vocab; // every id another, still inside the vocabulary
    }
    std::fs::write(&path, &bytes).unwrap();
    let again = eval(&ck, &data, &cache);
    assert!(again.status.success(), "{}", stderr(&again));
    let said = stderr(&again);
    assert!(said.contains("rebuilding it") && said.contains("checksum"), "{said}");
    assert_eq!(again.stdout, honest.stdout, "scored on the tampered ids");

    let shared = dir.path().join("shared");
    let big = dir.path().join("big.txt");
    std::fs::write(&big, common::tiny_text().repeat(200)).unwrap();
    let builders: Vec<Child> = (0..2)
        .map(|_| {
            let args =
                ["eval", "--checkpoint", ck.to_str().unwrap(), "--data", big.to_str().unwrap(), "--json"];
            let mut c = charrnn_command(&args);
            c.env("CHARRNN_CACHE_DIR", &shared).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let outs: Vec<Output> = builders.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    assert!(outs.iter().all(|o| o.status.success()), "{:?}", outs.iter().map(stderr).collect::<Vec<_>>());
    assert_eq!(outs[0].stdout, outs[1].stdout);
    let after = eval(&ck, &big, &shared);
    assert!(!stderr(&after).contains("rebuilding"), "{}", stderr(&after));
    assert_eq!(after.stdout, outs[0].stdout);
}

/// (Item 13.) Cache folders are their owner's (0700), caches and temporaries 0600; without a home
/// the fallback is a folder of this user's own, and one that others may write to is not
/// used; a file replaced atomically keeps its permission bits.
#[cfg(unix)]
#[test]
fn caches_are_private_and_replaced_files_keep_their_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cache) = (text_file(dir.path()), dir.path().join("new/cache"));
    let ck = dir.path().join("ck");
    assert!(run(train(&data, &ck, &cache, &["--epochs", "1", "--seed", "1"])).status.success());
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&cache_file(&cache)), 0o600);

    // No home, no cache settings: a folder of this user's own in the temporary folder.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let homeless = |ck: &Path| {
        let mut args =
            vec!["train", "--data", data.to_str().unwrap(), "--checkpoint-dir", ck.to_str().unwrap()];
        args.extend_from_slice(SMALL);
        args.extend_from_slice(&["--epochs", "1", "--seed", "1"]);
        let mut c = charrnn_command(&args);
        c.env_remove("HOME").env_remove("XDG_CACHE_HOME").env_remove("CHARRNN_CACHE_DIR").env("TMPDIR", &tmp);
        c.output().unwrap()
    };
    let o = homeless(&dir.path().join("ck2"));
    assert!(o.status.success(), "{}", stderr(&o));
    let own: Vec<PathBuf> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(own.len(), 1, "{own:?}");
    assert!(own[0].file_name().unwrap().to_str().unwrap().starts_with("charrnn-"), "{own:?}");
    assert_eq!(mode(&own[0]), 0o700);
    // Planted, writable by anyone: not used.
    std::fs::remove_dir_all(&own[0]).unwrap();
    std::fs::create_dir(&own[0]).unwrap();
    std::fs::set_permissions(&own[0], std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let o = homeless(&dir.path().join("ck3"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("using a temporary token cache"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&own[0]).unwrap().count(), 0, "a cache went into the planted folder");

    // A file the user made private stays so when the run rewrites it.
    let metrics = ck.join("metrics.jsonl");
    std::fs::set_permissions(&metrics, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert!(run(train(&data, &ck, &cache, &["--resume", "--epochs", "2"])).status.success());
    assert_eq!(mode(&metrics), 0o600);
    assert_eq!(mode(&ck.join("ckpt_2.safetensors")), 0o644, "a new checkpoint");
}

/// A server on 127.0.0.1 that answers each request with the next of `answers`; its URL.
fn answering(answers: Vec<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for answer in answers {
            let Ok((mut stream, _)) = listener.accept() else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = stream.write_all(&answer);
        }
    });
    url
}

/// (Item 14.) A redirect is refused, naming where it points and the flag; with --follow-redirects it
/// is followed.
#[test]
fn downloads_follow_redirects_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::tiny_text();
    let sha = sha256_hex(text.as_bytes());
    let body =
        |text: &str| format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len()).into_bytes();
    let target = answering(vec![body(&text)]);
    let redirect = |to: &str| {
        format!("HTTP/1.1 302 Found\r\nLocation: {to}/real.txt\r\nContent-Length: 0\r\n\r\n").into_bytes()
    };
    let first = answering(vec![redirect(&target), redirect(&target)]);
    let out = dir.path().join("corpus.txt");
    let download = |extra: &[&str]| {
        let mut args = vec!["download", "--url", &first, "--output", out.to_str().unwrap(), "--sha256", &sha];
        args.extend_from_slice(extra);
        charrnn_command(&args).output().unwrap()
    };
    let o = download(&[]);
    let why = stderr(&o);
    assert!(!o.status.success() && why.contains("302") && why.contains("--follow-redirects"), "{why}");
    assert!(why.contains(&target), "{why}");
    assert!(!out.exists());
    let o = download(&["--follow-redirects"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Rewrites the `state` JSON of an optimizer-state file through `change` (the tensors stay).
fn edit_position(path: &Path, change: impl Fn(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut state: serde_json::Value =
        serde_json::from_str(header["__metadata__"]["state"].as_str().unwrap()).unwrap();
    change(&mut state);
    header["__metadata__"]["state"] = serde_json::Value::String(state.to_string());
    let mut json = serde_json::to_vec(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// (Item 15.) An optimizer state whose position lies past its epoch's end is refused, not trained
/// from as an epoch of no batches.
#[test]
fn a_position_past_the_epochs_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cache) = (text_file(dir.path()), dir.path().join("cache"));
    let ck = dir.path().join("ck");
    assert!(run(train(&data, &ck, &cache, &["--epochs", "2", "--max-steps", "3", "--seed", "1"]))
        .status
        .success());
    let optim = ck.join("interrupted.optim.safetensors");
    edit_position(&optim, |s| s["batch"] = serde_json::json!(100_000));
    let o = run(train(&data, &ck, &cache, &["--resume"]));
    let why = stderr(&o);
    assert!(
        !o.status.success() && why.contains("after batch 100000") && why.contains("resume from another"),
        "{why}"
    );
    assert!(!why.contains("Loss: 0.0000"), "{why}");
}
