//! Modbus RTU master over one serial port, shared by every device on that RS-485 line.
//!
//! Polls on a port are serialised by construction (one task owns the port) and spaced by the
//! protocol's silent interval. Each poll reads the device's points in as few requests as possible
//! (neighbouring registers of one kind in one read of at most 125). Timeouts, CRC errors, exception
//! responses and malformed answers are counted against the device and never stop the others; only a
//! failing port (unplugged adapter) stops the driver, and the supervisor reopens it.
//!
//! The framing is written here rather than taken from tokio-modbus because its RTU decoder skips a
//! frame with a bad CRC and keeps hunting, so CRC errors surface as timeouts and cannot be counted,
//! and it neither drains stale input nor keeps the silent interval between requests.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::driver::{Driver, DriverContext, DriverError, DriverFuture, ErrorKind};
use crate::reading::{Quality, Reading};
use crate::registers::{self, DataType, WordOrder};
use crate::serial::{self, Parity};

#[derive(Debug, Clone, PartialEq)]
pub struct ModbusPoint {
    pub metric: String,
    pub register: u16,
    /// Input registers (function 4) rather than holding registers (function 3).
    pub input: bool,
    pub data_type: DataType,
    pub word_order: WordOrder,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModbusDevice {
    pub id: String,
    pub slave: u8,
    pub interval: Duration,
    pub timeout: Duration,
    pub points: Vec<ModbusPoint>,
}

/// One read request covering several points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub function: u8,
    pub start: u16,
    pub count: u16,
    /// Indexes of the points this block serves.
    pub points: Vec<usize>,
}

/// The most registers one read may ask for (the protocol's limit).
const MAX_REGISTERS: u16 = 125;

/// Groups a device's points into the fewest reads: per function, sorted by register, merged while
/// the span stays within [`MAX_REGISTERS`].
pub fn plan(points: &[ModbusPoint]) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    for function in [3u8, 4u8] {
        let mut idx: Vec<usize> = (0..points.len())
            .filter(|&i| (function == 4) == points[i].input)
            .collect();
        idx.sort_by_key(|&i| points[i].register);
        let mut current: Option<Block> = None;
        for i in idx {
            let p = &points[i];
            let end = u32::from(p.register) + u32::from(p.data_type.registers());
            match current.as_mut() {
                Some(b) if end - u32::from(b.start) <= u32::from(MAX_REGISTERS) => {
                    b.count = b.count.max((end - u32::from(b.start)) as u16);
                    b.points.push(i);
                }
                _ => {
                    if let Some(b) = current.take() {
                        blocks.push(b);
                    }
                    current = Some(Block {
                        function,
                        start: p.register,
                        count: p.data_type.registers(),
                        points: vec![i],
                    });
                }
            }
        }
        if let Some(b) = current {
            blocks.push(b);
        }
    }
    blocks
}

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF), sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

pub fn read_request(slave: u8, function: u8, start: u16, count: u16) -> [u8; 8] {
    let mut frame = [0u8; 8];
    frame[0] = slave;
    frame[1] = function;
    frame[2..4].copy_from_slice(&start.to_be_bytes());
    frame[4..6].copy_from_slice(&count.to_be_bytes());
    let crc = crc16(&frame[..6]);
    frame[6..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Why a transaction produced no registers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    #[error("no answer in time")]
    Timeout,
    #[error("an answer with a bad CRC")]
    Crc,
    #[error("exception {0}")]
    Exception(u8),
    #[error("a malformed answer: {0}")]
    Malformed(String),
}

impl TransactionError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TransactionError::Timeout => ErrorKind::Timeout,
            TransactionError::Crc => ErrorKind::Crc,
            TransactionError::Exception(_) => ErrorKind::Exception,
            TransactionError::Malformed(_) => ErrorKind::Malformed,
        }
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Registers(Vec<u16>),
    Error(TransactionError),
    /// Not enough bytes yet.
    Incomplete,
}

/// Looks for the answer to a read of `count` registers from `slave` with `function` in `buf`,
/// skipping any noise before it. A frame with the right header and length but a bad CRC is a CRC
/// error only once no good frame can follow it (`final_look`).
pub fn find_answer(buf: &[u8], slave: u8, function: u8, count: u16, final_look: bool) -> Answer {
    let data_len = usize::from(count) * 2;
    let mut saw_bad_crc = false;
    let mut saw_header = false;
    for i in 0..buf.len() {
        if buf[i] != slave {
            continue;
        }
        let Some(&fc) = buf.get(i + 1) else { break };
        let (len, exception) = if fc == function {
            match buf.get(i + 2) {
                Some(&n) if usize::from(n) == data_len => (5 + data_len, false),
                Some(_) => continue,
                None => {
                    saw_header = true;
                    break;
                }
            }
        } else if fc == function | 0x80 {
            (5, true)
        } else {
            continue;
        };
        saw_header = true;
        let Some(frame) = buf.get(i..i + len) else {
            continue;
        };
        let stated = u16::from_le_bytes([frame[len - 2], frame[len - 1]]);
        if crc16(&frame[..len - 2]) != stated {
            saw_bad_crc = true;
            continue;
        }
        if exception {
            return Answer::Error(TransactionError::Exception(frame[2]));
        }
        let registers = frame[3..3 + data_len]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        return Answer::Registers(registers);
    }
    if !final_look {
        return Answer::Incomplete;
    }
    if saw_bad_crc {
        Answer::Error(TransactionError::Crc)
    } else if saw_header || !buf.is_empty() {
        Answer::Error(TransactionError::Malformed(format!(
            "{} bytes without a valid answer",
            buf.len()
        )))
    } else {
        Answer::Error(TransactionError::Timeout)
    }
}

/// One request and its answer. Stale input is drained first, so a late answer to an earlier
/// request can never be taken for this one.
pub async fn transact<S>(
    port: &mut S,
    slave: u8,
    function: u8,
    start: u16,
    count: u16,
    timeout: Duration,
) -> Result<Result<Vec<u16>, TransactionError>, std::io::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut scratch = [0u8; 256];
    // Polling once with a zero timeout reads whatever is already waiting, without blocking.
    while let Ok(r) = tokio::time::timeout(Duration::ZERO, port.read(&mut scratch)).await {
        if r? == 0 {
            break;
        }
    }
    port.write_all(&read_request(slave, function, start, count))
        .await?;
    port.flush().await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(5 + usize::from(count) * 2);
    loop {
        match tokio::time::timeout_at(deadline, port.read(&mut scratch)).await {
            Ok(Ok(0)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the port closed",
                ));
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&scratch[..n]);
                match find_answer(&buf, slave, function, count, false) {
                    Answer::Incomplete => {}
                    Answer::Registers(r) => return Ok(Ok(r)),
                    Answer::Error(e) => return Ok(Err(e)),
                }
                if buf.len() > 4096 {
                    return Ok(find_answer(&buf, slave, function, count, true).into_result());
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(find_answer(&buf, slave, function, count, true).into_result()),
        }
    }
}

impl Answer {
    fn into_result(self) -> Result<Vec<u16>, TransactionError> {
        match self {
            Answer::Registers(r) => Ok(r),
            Answer::Error(e) => Err(e),
            Answer::Incomplete => Err(TransactionError::Timeout),
        }
    }
}

/// Turns a block's registers into readings.
pub fn block_readings(
    device: &ModbusDevice,
    block: &Block,
    registers: &[u16],
    now_ms: i64,
) -> Vec<Reading> {
    let mut out = Vec::new();
    for &i in &block.points {
        let p = &device.points[i];
        let offset = usize::from(p.register - block.start);
        let Some(slice) = registers.get(offset..) else {
            continue;
        };
        let Ok(value) = registers::decode(slice, p.data_type, p.word_order, p.scale, p.offset)
        else {
            continue;
        };
        out.push(
            Reading {
                device: device.id.clone(),
                metric: p.metric.clone(),
                time_ms: now_ms,
                value,
                unit: p.unit.clone(),
                quality: Quality::Good,
            }
            .with_range(p.min, p.max),
        );
    }
    out
}

/// A write-single-coil request (function 05).
pub fn write_coil_request(slave: u8, coil: u16, on: bool) -> [u8; 8] {
    let mut frame = [0u8; 8];
    frame[0] = slave;
    frame[1] = 5;
    frame[2..4].copy_from_slice(&coil.to_be_bytes());
    frame[4] = if on { 0xFF } else { 0x00 };
    frame[5] = 0;
    let crc = crc16(&frame[..6]);
    frame[6..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Looks for a frame of exactly `len` bytes from `slave` with `function` and a good CRC (or its
/// exception), behind any noise; the frame's bytes, or why there is none.
pub fn find_frame(
    buf: &[u8],
    slave: u8,
    function: u8,
    len: usize,
    final_look: bool,
) -> Result<Option<&[u8]>, TransactionError> {
    let mut saw_bad_crc = false;
    for i in 0..buf.len() {
        if buf[i] != slave {
            continue;
        }
        let Some(&fc) = buf.get(i + 1) else { break };
        let want = if fc == function {
            len
        } else if fc == function | 0x80 {
            5
        } else {
            continue;
        };
        let Some(frame) = buf.get(i..i + want) else {
            continue;
        };
        let stated = u16::from_le_bytes([frame[want - 2], frame[want - 1]]);
        if crc16(&frame[..want - 2]) != stated {
            saw_bad_crc = true;
            continue;
        }
        if fc != function {
            return Err(TransactionError::Exception(frame[2]));
        }
        return Ok(Some(frame));
    }
    if !final_look {
        Ok(None)
    } else if saw_bad_crc {
        Err(TransactionError::Crc)
    } else if buf.is_empty() {
        Err(TransactionError::Timeout)
    } else {
        Err(TransactionError::Malformed(format!(
            "{} bytes without a valid answer",
            buf.len()
        )))
    }
}

/// Sends `request` and waits for the frame `check` accepts (after draining stale input).
async fn exchange<S, T>(
    port: &mut S,
    request: &[u8],
    slave: u8,
    function: u8,
    len: usize,
    timeout: Duration,
    check: impl Fn(&[u8]) -> Result<T, TransactionError>,
) -> Result<Result<T, TransactionError>, std::io::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut scratch = [0u8; 256];
    while let Ok(r) = tokio::time::timeout(Duration::ZERO, port.read(&mut scratch)).await {
        if r? == 0 {
            break;
        }
    }
    port.write_all(request).await?;
    port.flush().await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(16);
    loop {
        let last = match tokio::time::timeout_at(deadline, port.read(&mut scratch)).await {
            Ok(Ok(0)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the port closed",
                ));
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&scratch[..n]);
                buf.len() > 1024
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => true,
        };
        match find_frame(&buf, slave, function, len, last) {
            Ok(Some(frame)) => return Ok(check(frame)),
            Ok(None) => {}
            Err(e) => return Ok(Err(e)),
        }
    }
}

/// Switches a coil and reads it back; one retry of each step on a line error, as a relay write
/// lost to noise must not leave a zone silent.
pub async fn switch_coil<S>(
    port: &mut S,
    slave: u8,
    coil: u16,
    on: bool,
    timeout: Duration,
    silent: Duration,
) -> Result<(), CoilError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = write_coil_request(slave, coil, on);
    let mut written = Err(TransactionError::Timeout);
    for _ in 0..2 {
        written = exchange(port, &request, slave, 5, 8, timeout, |frame| {
            if frame == request {
                Ok(())
            } else {
                Err(TransactionError::Malformed(
                    "the echo differs from the request".into(),
                ))
            }
        })
        .await
        .map_err(|e| CoilError::Port(e.to_string()))?;
        if written.is_ok() {
            break;
        }
        silent_gap(silent).await;
    }
    written.map_err(CoilError::Write)?;
    silent_gap(silent).await;
    let read = read_request(slave, 1, coil, 1);
    let mut state = Err(TransactionError::Timeout);
    for _ in 0..2 {
        state = exchange(port, &read, slave, 1, 6, timeout, |frame| {
            if frame[2] == 1 {
                Ok(frame[3] & 1 == 1)
            } else {
                Err(TransactionError::Malformed(
                    "a coil answer of the wrong size".into(),
                ))
            }
        })
        .await
        .map_err(|e| CoilError::Port(e.to_string()))?;
        if state.is_ok() {
            break;
        }
        silent_gap(silent).await;
    }
    match state.map_err(CoilError::ReadBack)? {
        s if s == on => Ok(()),
        s => Err(CoilError::Mismatch(s)),
    }
}

/// Waits out the silent interval precisely. Tokio's timer works in whole milliseconds, which would
/// stretch a 1.75 ms gap to 2-3 ms and cost a fifth of the line's capacity at 115,200 baud; a thread
/// sleep is accurate to tens of microseconds, and `block_in_place` lets the runtime move other tasks
/// off this worker meanwhile.
async fn silent_gap(gap: Duration) {
    if gap > Duration::from_millis(5) {
        tokio::time::sleep(gap).await;
    } else if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        tokio::task::block_in_place(|| std::thread::sleep(gap));
    } else {
        std::thread::sleep(gap);
    }
}

/// Every device on one serial port.
pub struct ModbusPort {
    pub port: String,
    pub baud: u32,
    pub parity: Parity,
    pub devices: Vec<ModbusDevice>,
    /// Relay switching for loudspeaker amplifiers on this line, served between polls by the same
    /// task so a broadcast and a poll never collide on the wire. Kept across restarts of the driver.
    pub coils: Option<tokio::sync::mpsc::Receiver<CoilCommand>>,
}

/// Switch one coil (function 05) and confirm it by reading it back (function 01).
#[derive(Debug)]
pub struct CoilCommand {
    pub slave: u8,
    pub coil: u16,
    pub on: bool,
    pub timeout: Duration,
    /// The answer: `Ok` once the coil reads back as commanded.
    pub reply: tokio::sync::oneshot::Sender<Result<(), CoilError>>,
}

/// Why a coil was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoilError {
    #[error("the write was not acknowledged: {0}")]
    Write(TransactionError),
    #[error("the read-back failed: {0}")]
    ReadBack(TransactionError),
    #[error("the coil reads {0} after the write")]
    Mismatch(bool),
    #[error("the serial port failed: {0}")]
    Port(String),
}

impl Driver for ModbusPort {
    fn name(&self) -> String {
        format!("modbus_rtu:{}", self.port)
    }

    fn run<'a>(&'a mut self, ctx: &'a DriverContext) -> DriverFuture<'a> {
        Box::pin(async move {
            let mut stream = serial::open(&self.port, self.baud, self.parity)?;
            poll_loop_with_coils(
                &mut stream,
                self.baud,
                &self.devices,
                ctx,
                &self.port,
                self.coils.as_mut(),
            )
            .await
        })
    }
}

/// Polls every device on `stream` at its interval until shutdown or a port failure.
pub async fn poll_loop<S>(
    stream: &mut S,
    baud: u32,
    devices: &[ModbusDevice],
    ctx: &DriverContext,
    port: &str,
) -> Result<(), DriverError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    poll_loop_with_coils(stream, baud, devices, ctx, port, None).await
}

/// [`poll_loop`], also serving coil commands between polls (ahead of any poll that is due: an
/// amplifier waiting for power matters more than a reading a few milliseconds late).
pub async fn poll_loop_with_coils<S>(
    stream: &mut S,
    baud: u32,
    devices: &[ModbusDevice],
    ctx: &DriverContext,
    port: &str,
    mut coils: Option<&mut tokio::sync::mpsc::Receiver<CoilCommand>>,
) -> Result<(), DriverError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let silent = serial::silent_interval(baud);
    let plans: Vec<Vec<Block>> = devices.iter().map(|d| plan(&d.points)).collect();
    let start = tokio::time::Instant::now();
    let mut next_due = vec![start; devices.len()];
    // With no devices, only coil commands wake the loop.
    let far = start + Duration::from_secs(86_400 * 365);
    loop {
        let (i, due) = next_due
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, t)| *t)
            .unwrap_or((usize::MAX, far));
        tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => {
                // Players switch their relays off as they stop: serve those last commands (for a
                // few seconds at most) so no amplifier stays powered through a restart.
                if let Some(rx) = coils.as_mut() {
                    let until = tokio::time::Instant::now() + Duration::from_secs(3);
                    while let Ok(Some(c)) = tokio::time::timeout_at(until, rx.recv()).await {
                        let result = switch_coil(stream, c.slave, c.coil, c.on, c.timeout, silent).await;
                        let _ = c.reply.send(result);
                        silent_gap(silent).await;
                    }
                }
                return Ok(());
            }
            command = async {
                match coils.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match command {
                    Some(c) => {
                        let result = switch_coil(stream, c.slave, c.coil, c.on, c.timeout, silent).await;
                        let failed_port = match &result {
                            Err(CoilError::Port(e)) => Some(e.clone()),
                            _ => None,
                        };
                        let _ = c.reply.send(result);
                        if let Some(e) = failed_port {
                            return Err(DriverError::io(
                                format!("serial port {port}"),
                                std::io::Error::other(e),
                            ));
                        }
                        silent_gap(silent).await;
                    }
                    // Nobody can send commands any more: poll only.
                    None => coils = None,
                }
                continue;
            }
            () = tokio::time::sleep_until(due) => {}
        }
        let Some(device) = devices.get(i) else {
            continue;
        };
        let interval = device.interval.max(Duration::from_millis(1));
        next_due[i] = due + interval;
        let now = tokio::time::Instant::now();
        if next_due[i] < now {
            // Behind schedule (a slow line): skip missed polls rather than burst.
            next_due[i] = now + interval;
        }
        let now_ms = ctx.now();
        let mut readings = Vec::new();
        for block in &plans[i] {
            let answer = transact(
                stream,
                device.slave,
                block.function,
                block.start,
                block.count,
                device.timeout,
            )
            .await
            .map_err(|e| DriverError::io(format!("serial port {port}"), e))?;
            match answer {
                Ok(registers) => {
                    ctx.health.ok(&device.id, now_ms);
                    readings.extend(block_readings(device, block, &registers, now_ms));
                }
                Err(e) => ctx
                    .health
                    .error(&device.id, e.kind(), e.to_string(), now_ms),
            }
            silent_gap(silent).await;
        }
        ctx.sink.send(readings).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn point(metric: &str, register: u16, data_type: DataType, input: bool) -> ModbusPoint {
        ModbusPoint {
            metric: metric.into(),
            register,
            input,
            data_type,
            word_order: WordOrder::Big,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            min: None,
            max: None,
        }
    }

    fn answer(slave: u8, function: u8, registers: &[u16]) -> Vec<u8> {
        let mut f = vec![slave, function, (registers.len() * 2) as u8];
        for r in registers {
            f.extend_from_slice(&r.to_be_bytes());
        }
        let crc = crc16(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    #[test]
    fn crc_matches_the_specifications_example() {
        // Read holding registers 0x006B..+3 from slave 17: the classic example frame.
        assert_eq!(
            read_request(0x11, 3, 0x006B, 3),
            [0x11, 0x03, 0x00, 0x6B, 0x00, 0x03, 0x76, 0x87]
        );
    }

    #[test]
    fn plan_merges_neighbours_and_splits_kinds_and_far_registers() {
        let points = vec![
            point("a", 0, DataType::U16, false),
            point("b", 2, DataType::F32, true),
            point("c", 1, DataType::U32, false),
            point("d", 300, DataType::U16, false),
        ];
        let blocks = plan(&points);
        assert_eq!(blocks.len(), 3);
        assert_eq!(
            (blocks[0].function, blocks[0].start, blocks[0].count),
            (3, 0, 3)
        );
        assert_eq!(blocks[0].points, vec![0, 2]);
        assert_eq!((blocks[1].start, blocks[1].count), (300, 1));
        assert_eq!(
            (blocks[2].function, blocks[2].start, blocks[2].count),
            (4, 2, 2)
        );
    }

    #[test]
    fn finds_answers_behind_noise_and_classifies_failures() {
        let good = answer(1, 3, &[0x1234, 0xABCD]);
        let mut noisy = vec![0x00, 0x01, 0xFF];
        noisy.extend_from_slice(&good);
        assert_eq!(
            find_answer(&noisy, 1, 3, 2, false),
            Answer::Registers(vec![0x1234, 0xABCD])
        );
        assert_eq!(find_answer(&good[..5], 1, 3, 2, false), Answer::Incomplete);
        let mut bad = good.clone();
        bad[4] ^= 0x55;
        assert_eq!(
            find_answer(&bad, 1, 3, 2, true),
            Answer::Error(TransactionError::Crc)
        );
        let mut exc = vec![1, 0x83, 2];
        let crc = crc16(&exc);
        exc.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            find_answer(&exc, 1, 3, 2, false),
            Answer::Error(TransactionError::Exception(2))
        );
        assert_eq!(
            find_answer(&[], 1, 3, 2, true),
            Answer::Error(TransactionError::Timeout)
        );
        assert!(matches!(
            find_answer(&good, 2, 3, 2, true),
            Answer::Error(TransactionError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn transact_over_a_pipe_with_a_scripted_slave() {
        let (mut master, mut slave) = tokio::io::duplex(1024);
        let slave_task = tokio::spawn(async move {
            let mut req = [0u8; 8];
            slave.read_exact(&mut req).await.unwrap();
            assert_eq!(req, read_request(7, 4, 10, 2));
            // Noise, then the answer in two pieces.
            let a = answer(7, 4, &[0x4120, 0x0000]);
            slave.write_all(&[0xEE]).await.unwrap();
            slave.write_all(&a[..3]).await.unwrap();
            tokio::task::yield_now().await;
            slave.write_all(&a[3..]).await.unwrap();
            slave
        });
        let r = transact(&mut master, 7, 4, 10, 2, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(r, Ok(vec![0x4120, 0x0000]));
        let _slave = slave_task.await.unwrap();
        let r = transact(&mut master, 7, 4, 10, 2, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(r, Err(TransactionError::Timeout));
    }

    #[tokio::test]
    async fn a_coil_is_switched_and_confirmed_by_reading_it_back() {
        let (mut master, mut slave) = tokio::io::duplex(1024);
        let slave_task = tokio::spawn(async move {
            let mut req = [0u8; 8];
            slave.read_exact(&mut req).await.unwrap();
            assert_eq!(req, write_coil_request(3, 7, true));
            // Noise first, then the echo.
            slave.write_all(&[0x55, 0x03]).await.unwrap();
            slave.write_all(&req).await.unwrap();
            slave.read_exact(&mut req).await.unwrap();
            assert_eq!(req, read_request(3, 1, 7, 1));
            let mut a = vec![3, 1, 1, 1];
            let crc = crc16(&a);
            a.extend_from_slice(&crc.to_le_bytes());
            slave.write_all(&a).await.unwrap();
            // The next switch reads back the wrong state.
            slave.read_exact(&mut req).await.unwrap();
            slave.write_all(&req).await.unwrap();
            slave.read_exact(&mut req).await.unwrap();
            slave.write_all(&a).await.unwrap();
            slave
        });
        let r = switch_coil(
            &mut master,
            3,
            7,
            true,
            Duration::from_secs(2),
            Duration::ZERO,
        )
        .await;
        assert_eq!(r, Ok(()));
        let r = switch_coil(
            &mut master,
            3,
            7,
            false,
            Duration::from_secs(2),
            Duration::ZERO,
        )
        .await;
        assert_eq!(r, Err(CoilError::Mismatch(true)));
        let _slave = slave_task.await.unwrap();
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic_in_the_frame_search(
            bytes in proptest::collection::vec(any::<u8>(), 0..300), len in 5usize..12
        ) {
            if let Ok(Some(frame)) = find_frame(&bytes, 1, 5, len, true) {
                prop_assert_eq!(frame.len(), len);
                prop_assert_eq!(crc16(&frame[..len - 2]).to_le_bytes(), [frame[len - 2], frame[len - 1]]);
            }
        }

        #[test]
        fn any_bytes_never_panic_and_never_yield_registers_without_a_valid_crc(
            bytes in proptest::collection::vec(any::<u8>(), 0..300), count in 1u16..20
        ) {
            if let Answer::Registers(r) = find_answer(&bytes, 1, 3, count, true) {
                // Only possible if a CRC-valid frame happens to be inside the noise.
                prop_assert_eq!(r.len(), usize::from(count));
                let good = answer(1, 3, &r);
                prop_assert!(bytes.windows(good.len()).any(|w| w == good.as_slice()));
            }
        }
    }
}
