//! A serial line with a baud rate, for the Modbus benchmark (tests/bench/modbus.sh): relays bytes
//! between two pseudo-terminals (which have no speed of their own) and lets each chunk through only
//! once it would have finished crossing the wire at BAUD (11 bits per character), one direction at a
//! time per side, as on a real line.
//!
//! Usage: line_sim PTY_A PTY_B BAUD

use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn relay(mut from: std::fs::File, mut to: std::fs::File, baud: f64) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    let mut free_at = Instant::now();
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let start = free_at.max(Instant::now());
        let done = start + Duration::from_secs_f64(n as f64 * 11.0 / baud);
        let now = Instant::now();
        if done > now {
            std::thread::sleep(done - now);
        }
        to.write_all(&buf[..n])?;
        free_at = done;
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: line_sim PTY_A PTY_B BAUD");
        std::process::exit(2);
    }
    let baud: f64 = args[3].parse().map_err(std::io::Error::other)?;
    let open = |p: &str| std::fs::OpenOptions::new().read(true).write(true).open(p);
    let (a, b) = (open(&args[1])?, open(&args[2])?);
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    let forward = std::thread::spawn(move || relay(a, b2, baud));
    let back = std::thread::spawn(move || relay(b, a2, baud));
    println!("ready");
    forward
        .join()
        .map_err(|_| std::io::Error::other("relay panicked"))??;
    back.join()
        .map_err(|_| std::io::Error::other("relay panicked"))?
}
