//! A TCP proxy on loopback that a test can cut: to take one client's connection to a server
//! away (a node's to NATS) while the server and its other clients go on.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Forwards connections to `upstream` until cut; while cut, closes them as they come.
pub struct Cuttable {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    cut: bool,
    /// Both ends of every forwarded connection, to close them when cut.
    open: Vec<TcpStream>,
}

impl Cuttable {
    /// Starts forwarding from a free loopback port to `upstream`.
    pub fn start(upstream: SocketAddr) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let mut state = shared.lock().unwrap();
                if state.cut {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                for end in [&client, &server] {
                    if let Ok(clone) = end.try_clone() {
                        state.open.push(clone);
                    }
                }
                pump(&client, &server);
                pump(&server, &client);
            }
        });
        Cuttable { addr, state }
    }

    /// Closes every forwarded connection, and every new one until [`Cuttable::restore`].
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.cut = true;
        for end in state.open.drain(..) {
            let _ = end.shutdown(Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.state.lock().unwrap().cut = false;
    }
}

/// Copies what `from` sends to `to` on a thread of its own, closing `to` when `from` ends.
fn pump(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
    std::thread::spawn(move || {
        let _: io::Result<u64> = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
    });
}
