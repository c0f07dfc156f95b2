//! Test guest: guests/features, except that for a record of user 13 it tries
//! to open a TCP connection to 127.0.0.1:6379 (Redis) with
//! `std::net::TcpStream::connect` (wasi:sockets) and adds 1 to the emitted
//! feature's `as_of_timestamp_millis` if it connected, 0 if not. The host
//! grants no network: the call must fail the batch (the sandbox makes
//! `create-tcp-socket` trap with the reason), or at most fail to connect, so
//! the output is exactly that of guests/features; it must never connect.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};

struct OpenSocket;

impl Guest for OpenSocket {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(common::count_marked(batch, || {
            let redis = SocketAddr::from((Ipv4Addr::LOCALHOST, 6379));
            let connected = TcpStream::connect(redis).is_ok();
            i64::from(connected)
        }))
    }
}

export!(OpenSocket);
