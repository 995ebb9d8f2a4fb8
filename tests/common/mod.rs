//! Helpers shared by the integration tests.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A server on 127.0.0.1 that answers one request with a 200 and no length, then sends
/// `chunk` every `every` for at most `for_at_most` (a slow or endless body). Returns its URL.
pub fn trickling_server(chunk: &'static [u8], every: Duration, for_at_most: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/trickle.txt", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else { return };
        // Read the request first: a client sent an answer before its request gives up.
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let until = Instant::now() + for_at_most;
        while Instant::now() < until && stream.write_all(chunk).is_ok() {
            std::thread::sleep(every);
        }
    });
    url
}
