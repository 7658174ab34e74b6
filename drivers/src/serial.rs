//! Opening serial ports (RS-232/RS-485 adapters and, in tests, pseudo-terminals) with the settings
//! devices need, as async streams.

use crate::driver::DriverError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// Opens `path` at `baud`, 8 data bits, the given parity, one stop bit.
pub fn open(
    path: &str,
    baud: u32,
    parity: Parity,
) -> Result<tokio_serial::SerialStream, DriverError> {
    use tokio_serial::SerialPortBuilderExt;
    let parity = match parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    tokio_serial::new(path, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .stop_bits(tokio_serial::StopBits::One)
        .parity(parity)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(|e| {
            DriverError::io(
                format!("opening serial port {path}"),
                std::io::Error::other(e.to_string()),
            )
        })
}

/// The Modbus silent interval between frames: 3.5 character times (11 bits each), fixed at 1.75 ms
/// above 19,200 baud as the specification recommends.
pub fn silent_interval(baud: u32) -> std::time::Duration {
    if baud == 0 || baud > 19_200 {
        return std::time::Duration::from_micros(1750);
    }
    std::time::Duration::from_secs_f64(3.5 * 11.0 / f64::from(baud))
}
