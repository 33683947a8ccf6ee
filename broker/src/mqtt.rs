//! Just enough MQTT (3.1, 3.1.1 and 5) to relay frames and fire hooks: frame boundaries,
//! the fields hooks need, and the few packets the host writes itself. Payloads are never
//! copied; every decoder borrows from the frame.

pub mod frame;
pub mod packet;
