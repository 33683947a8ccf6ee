//! Opening a plugin's `cdylib` and checking its descriptor before calling any of its code.
//!
//! Libraries are opened with `RTLD_NODELETE` and their handles are never closed: unloading a
//! plugin stops it but keeps its code mapped (see the crate docs of `plugin-api` for why). A
//! library whose file changed since it was mapped is opened from a fresh copy, so `reload`
//! after a rebuild runs the new code.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use plugin_api::abi::{self, PluginDescriptor};
use plugin_api::{HookMask, PluginKind};

/// Why a plugin's library was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LibraryError {
    #[error("unknown plugin {name}: no library at {path}")]
    Missing { name: String, path: PathBuf },
    #[error("plugin {name}: cannot open {path}: {reason}")]
    Open { name: String, path: PathBuf, reason: String },
    #[error("plugin {name}: {path} is not a broker plugin (no `{symbol}` symbol)")]
    NoDescriptor { name: String, path: PathBuf, symbol: &'static str },
    #[error(
        "plugin {name} was built for plugin ABI version {found}; this broker accepts ABI version{} {}",
        if accepted.len() > 1 { "s" } else { "" },
        accepted.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    )]
    AbiMismatch { name: String, found: u32, accepted: &'static [u32] },
    #[error("plugin {name}: descriptor of {found} bytes is smaller than the {needed} bytes of ABI version 1's first release")]
    ShortDescriptor { name: String, found: u32, needed: u32 },
    #[error("plugin file {path} declares the name {declared:?}, not {name:?}")]
    NameMismatch { name: String, path: PathBuf, declared: String },
    #[error("plugin {name} declares an unknown kind {kind}")]
    UnknownKind { name: String, kind: u32 },
}

/// What a plugin says about itself, copied out of its descriptor.
#[derive(Debug, Clone)]
pub(crate) struct PluginMeta {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) description: String,
    pub(crate) kind: PluginKind,
    pub(crate) hooks: HookMask,
    /// The hooks whose `on_event` may block (none from a plugin built before it was added).
    pub(crate) blocking_hooks: HookMask,
    /// The hooks for which it wants only retained messages (none from a plugin built before
    /// it was added).
    pub(crate) retained_only_hooks: HookMask,
    /// The hooks it may answer later (none from a plugin built before it was added).
    pub(crate) later_hooks: HookMask,
    pub(crate) priority: i32,
    pub(crate) ctl_command: Option<String>,
}

/// Identity of a file's contents, to notice a rebuilt library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Fingerprint {
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

/// A mapped, checked plugin library. Never unmapped.
#[derive(Debug)]
pub(crate) struct PluginLibrary {
    pub(crate) meta: PluginMeta,
    /// A copy of the plugin's descriptor; fields its `size` does not cover are zero.
    descriptor: PluginDescriptor,
    fingerprint: Fingerprint,
}

/// The library file for plugin `name` in `dir`.
pub(crate) fn library_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("lib{name}.so"))
}

/// The names of the plugin libraries in `dir` (`libNAME.so`: whether each is a plugin is
/// known only once it is opened); none if it cannot be read.
pub(crate) fn library_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(|entry| {
            let file = entry.ok()?.file_name();
            let name = file.to_str()?.strip_prefix("lib")?.strip_suffix(".so")?;
            super::loaded_plugins::is_valid_name(name).then(|| name.to_owned())
        })
        .collect()
}

static COPIES: AtomicU64 = AtomicU64::new(0);

impl PluginLibrary {
    /// The checked descriptor.
    pub(crate) fn descriptor(&self) -> &PluginDescriptor {
        &self.descriptor
    }

    /// Whether the file at `path` is still the one this library was mapped from.
    pub(crate) fn is_current(&self, path: &Path) -> bool {
        fs::metadata(path).map(|m| Fingerprint::of(&m) == self.fingerprint).unwrap_or(false)
    }

    /// Maps `lib<name>.so` from `dir` and checks its descriptor. `fresh_copy` maps a copy of
    /// the file (needed when an older build of it is already mapped under its own path).
    pub(crate) fn open(dir: &Path, name: &str, fresh_copy: bool) -> Result<PluginLibrary, LibraryError> {
        let path = library_path(dir, name);
        let meta =
            fs::metadata(&path).map_err(|_| LibraryError::Missing { name: name.to_owned(), path: path.clone() })?;
        let fingerprint = Fingerprint::of(&meta);
        let open_error = |reason: String| LibraryError::Open { name: name.to_owned(), path: path.clone(), reason };

        let library = if fresh_copy {
            let copy = std::env::temp_dir().join(format!(
                "broker-plugin-{}-{}-{name}.so",
                std::process::id(),
                COPIES.fetch_add(1, Ordering::Relaxed)
            ));
            fs::copy(&path, &copy).map_err(|e| open_error(e.to_string()))?;
            let library = map(&copy);
            // The mapping keeps the contents; the name is no longer needed.
            let _ = fs::remove_file(&copy);
            library
        } else {
            map(&path)
        }
        .map_err(|e| open_error(e.to_string()))?;

        // SAFETY: we only read the address of the symbol here; it is dereferenced below after
        // checking it is non-null. A plugin exports it as a `static PluginDescriptor`.
        let symbol = unsafe { library.get::<*const PluginDescriptor>(abi::DESCRIPTOR_SYMBOL.as_bytes()) };
        let descriptor_ptr: *const PluginDescriptor = match symbol {
            Ok(symbol) => *symbol,
            Err(_) => return Err(no_descriptor(name, &path)),
        };
        if descriptor_ptr.is_null() {
            return Err(no_descriptor(name, &path));
        }
        // The library is never unmapped, so its statics live for the rest of the process.
        std::mem::forget(library);

        // SAFETY: the first two u32 fields of a descriptor are frozen across all ABI versions,
        // so they can be read from any plugin's descriptor.
        let (abi_version, size) = unsafe {
            let head = descriptor_ptr as *const u32;
            (head.read(), head.add(1).read())
        };
        if !abi::SUPPORTED_ABI_VERSIONS.contains(&abi_version) {
            return Err(LibraryError::AbiMismatch {
                name: name.to_owned(),
                found: abi_version,
                accepted: abi::SUPPORTED_ABI_VERSIONS,
            });
        }
        let needed = FIRST_RELEASE_SIZE as u32;
        if size < needed {
            return Err(LibraryError::ShortDescriptor { name: name.to_owned(), found: size, needed });
        }
        // SAFETY: the version and size checks passed, so the static has the first release's
        // fields, and those appended since that `size` covers; it lives as long as the (never
        // unmapped) library.
        let descriptor = unsafe { read_descriptor(descriptor_ptr, size as usize) };
        // SAFETY: descriptor strings point to the plugin's static data.
        let text = |s: abi::RawStr| unsafe { s.as_str() }.to_owned();
        let declared = text(descriptor.name);
        if declared != name {
            return Err(LibraryError::NameMismatch { name: name.to_owned(), path, declared });
        }
        let kind = PluginKind::from_raw(descriptor.kind)
            .ok_or(LibraryError::UnknownKind { name: name.to_owned(), kind: descriptor.kind })?;
        let ctl_command = Some(text(descriptor.ctl_command)).filter(|c| !c.is_empty());
        Ok(PluginLibrary {
            meta: PluginMeta {
                name: declared,
                version: text(descriptor.version),
                description: text(descriptor.description),
                kind,
                hooks: HookMask(descriptor.hooks),
                blocking_hooks: HookMask(descriptor.blocking_hooks & descriptor.hooks),
                retained_only_hooks: HookMask(descriptor.retained_only_hooks & descriptor.hooks),
                later_hooks: HookMask(descriptor.later_hooks & descriptor.hooks),
                priority: descriptor.priority,
                ctl_command,
            },
            descriptor,
            fingerprint,
        })
    }
}

/// The size of a descriptor of ABI version 1's first release: up to `blocking_hooks`.
const FIRST_RELEASE_SIZE: usize = std::mem::offset_of!(PluginDescriptor, blocking_hooks);

/// Copies a plugin's descriptor field by field, never reading past its `size` (a plugin built
/// before a field was appended has a shorter static): an absent field reads as zero.
///
/// # Safety
/// `ptr` points to a descriptor of ABI version 1 that is at least [`FIRST_RELEASE_SIZE`] and
/// `size` bytes long.
unsafe fn read_descriptor(ptr: *const PluginDescriptor, size: usize) -> PluginDescriptor {
    let has = |offset: usize, len: usize| size >= offset + len;
    // SAFETY: every field read is within the first release's fields, or within `size`
    // (checked); the caller promises both are readable.
    unsafe {
        PluginDescriptor {
            abi_version: (&raw const (*ptr).abi_version).read(),
            size: (&raw const (*ptr).size).read(),
            name: (&raw const (*ptr).name).read(),
            version: (&raw const (*ptr).version).read(),
            description: (&raw const (*ptr).description).read(),
            kind: (&raw const (*ptr).kind).read(),
            priority: (&raw const (*ptr).priority).read(),
            hooks: (&raw const (*ptr).hooks).read(),
            ctl_command: (&raw const (*ptr).ctl_command).read(),
            init: (&raw const (*ptr).init).read(),
            on_event: (&raw const (*ptr).on_event).read(),
            ctl: (&raw const (*ptr).ctl).read(),
            stop: (&raw const (*ptr).stop).read(),
            blocking_hooks: if has(std::mem::offset_of!(PluginDescriptor, blocking_hooks), 8) {
                (&raw const (*ptr).blocking_hooks).read()
            } else {
                0
            },
            retained_only_hooks: if has(std::mem::offset_of!(PluginDescriptor, retained_only_hooks), 8) {
                (&raw const (*ptr).retained_only_hooks).read()
            } else {
                0
            },
            later_hooks: if has(std::mem::offset_of!(PluginDescriptor, later_hooks), 8) {
                (&raw const (*ptr).later_hooks).read()
            } else {
                0
            },
        }
    }
}

fn map(path: &Path) -> Result<Library, libloading::Error> {
    // SAFETY: loading a library runs its initialisers; plugin libraries are trusted code the
    // operator put in the plugins directory. RTLD_NODELETE keeps it mapped for good.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL | libc::RTLD_NODELETE) }
}

fn no_descriptor(name: &str, path: &Path) -> LibraryError {
    LibraryError::NoDescriptor { name: name.to_owned(), path: path.to_owned(), symbol: abi::DESCRIPTOR_SYMBOL }
}
