//! The plugin side of the host: finding and mapping libraries, running instances, the
//! `loaded_plugins` file, the host vtable, and the manager tying them together.

pub mod host_api;
pub mod instance;
pub mod library;
pub mod loaded_plugins;
pub mod manager;
