//! The plugin side of the host: finding and mapping libraries, running instances, the
//! `loaded_plugins` file, the host vtable (and its store functions), and the manager tying
//! them together.

pub(crate) mod host_api;
pub(crate) mod host_store;
pub(crate) mod instance;
pub(crate) mod library;
pub(crate) mod loaded_plugins;
pub(crate) mod manager;
