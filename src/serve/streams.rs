//! The sampler's rows as a shared budget: every request reserves rows for its samples before it
//! is queued, within the server's total and its client's fair share, and gives them back when
//! it ends, wherever that happens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::access::Client;

/// Rows in use, in all and per client.
pub struct Streams {
    max: usize,
    per_client: usize,
    in_use: Mutex<(usize, HashMap<Client, usize>)>,
}

/// Why rows could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The server's total is reached.
    Server(usize),
    /// This client's share is reached.
    Client(usize),
}

impl Streams {
    /// A budget of `max` rows, at most `per_client` of them for one client.
    pub fn new(max: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Streams { max, per_client, in_use: Mutex::new((0, HashMap::new())) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<Client, usize>)> {
        self.in_use.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows in use now.
    pub fn in_use(&self) -> usize {
        self.lock().0
    }

    /// Reserves `rows` for `client`.
    pub fn reserve(self: &Arc<Self>, client: Client, rows: usize) -> Result<Slot, Busy> {
        let mut guard = self.lock();
        let (total, clients) = &mut *guard;
        let mine = clients.get(&client).copied().unwrap_or(0);
        if mine + rows > self.per_client {
            return Err(Busy::Client(self.per_client));
        }
        if *total + rows > self.max {
            return Err(Busy::Server(self.max));
        }
        *total += rows;
        clients.insert(client.clone(), mine + rows);
        Ok(Slot { streams: self.clone(), client, rows })
    }
}

/// Rows reserved for a request; given back when it is dropped.
pub struct Slot {
    streams: Arc<Streams>,
    client: Client,
    rows: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.streams.lock();
        let (total, clients) = &mut *guard;
        *total -= self.rows;
        if let Some(n) = clients.get_mut(&self.client) {
            *n -= self.rows;
            if *n == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_has_its_share_and_the_server_its_total() {
        let streams = Streams::new(5, 3);
        let (a, b, c) = (Client::Key(0), Client::Key(1), Client::Key(2));
        let a1 = streams.reserve(a.clone(), 2).unwrap();
        assert_eq!(streams.reserve(a.clone(), 2).err(), Some(Busy::Client(3)));
        let _b1 = streams.reserve(b.clone(), 3).unwrap();
        assert_eq!(streams.reserve(c.clone(), 1).err(), Some(Busy::Server(5)));
        drop(a1);
        assert_eq!(streams.in_use(), 3);
        let _a2 = streams.reserve(a, 2).unwrap();
        assert_eq!(streams.in_use(), 5);
    }
}
