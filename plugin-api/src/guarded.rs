//! Test-only: an ABI struct as an older (or other) build made it, in memory that ends exactly
//! where its declared `size` ends, so that a read or write past `size` is caught.
//!
//! Natively the bytes sit right before a page mapped `PROT_NONE`: touching the byte after them
//! faults and the test process dies (`guard_page_faults_on_the_byte_after`, in a child process,
//! shows it does). Under Miri the bytes are a heap allocation of exactly `size` bytes, and Miri
//! reports any access past it as undefined behaviour.

use std::ptr::NonNull;

/// The first `size` bytes of a struct, with nothing readable after them. Freed on drop.
#[derive(Debug)]
pub(crate) struct Guarded {
    /// The copied bytes; `size` of them, then (natively) the guard page.
    ptr: NonNull<u8>,
    #[cfg_attr(miri, allow(dead_code))]
    size: usize,
    /// What to free: natively the mapping (start, length); under Miri the allocation's layout.
    #[cfg(not(miri))]
    mapping: (*mut libc::c_void, usize),
    #[cfg(miri)]
    layout: std::alloc::Layout,
}

impl Guarded {
    /// Copies the first `size` bytes of `value` (bit for bit, padding included) into guarded
    /// memory. `size` must be a multiple of `T`'s alignment, so the copy stays aligned against
    /// the page boundary.
    pub(crate) fn prefix<T>(value: &T, size: usize) -> Guarded {
        assert!(size > 0 && size <= std::mem::size_of::<T>(), "a prefix of the struct");
        assert_eq!(size % std::mem::align_of::<T>(), 0, "the copy must stay aligned");
        let guarded = Guarded::alloc(size, std::mem::align_of::<T>());
        // SAFETY: `value` is readable for size_of::<T>() >= size bytes (an untyped copy, so its
        // padding may be uninitialised); the destination is `size` writable bytes of our own.
        unsafe { std::ptr::copy_nonoverlapping(value as *const T as *const u8, guarded.ptr.as_ptr(), size) };
        guarded
    }

    #[cfg(not(miri))]
    fn alloc(size: usize, _align: usize) -> Guarded {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
        let data_pages = size.div_ceil(page);
        let length = (data_pages + 1) * page;
        // SAFETY: a fresh anonymous private mapping, no address hint.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(start, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        // SAFETY: the last page of our own mapping.
        let guard = unsafe { start.cast::<u8>().add(data_pages * page) };
        // SAFETY: `guard` is page-aligned and inside the mapping.
        let protected = unsafe { libc::mprotect(guard.cast(), page, libc::PROT_NONE) };
        assert_eq!(protected, 0, "mprotect: {}", std::io::Error::last_os_error());
        // SAFETY: `size` bytes before the guard page are inside the mapping.
        let ptr = NonNull::new(unsafe { guard.sub(size) }).expect("non-null");
        Guarded { ptr, size, mapping: (start, length) }
    }

    #[cfg(miri)]
    fn alloc(size: usize, align: usize) -> Guarded {
        let layout = std::alloc::Layout::from_size_align(size, align).expect("layout");
        // SAFETY: `size` is not zero.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) }).expect("allocation");
        Guarded { ptr, size, layout }
    }

    /// The copy, as the pointer the other side would hand over.
    pub(crate) fn as_ptr<T>(&self) -> *mut T {
        self.ptr.as_ptr().cast()
    }

    /// How many bytes are readable at [`Guarded::as_ptr`].
    #[cfg_attr(miri, allow(dead_code))]
    pub(crate) fn size(&self) -> usize {
        self.size
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        #[cfg(not(miri))]
        // SAFETY: our own mapping, unmapped once.
        unsafe {
            libc::munmap(self.mapping.0, self.mapping.1);
        }
        #[cfg(miri)]
        // SAFETY: allocated in `alloc` with this layout, freed once.
        unsafe {
            std::alloc::dealloc(self.ptr.as_ptr(), self.layout);
        }
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    /// The guard is real: in a child process, reading the byte right after the copy dies of
    /// SIGSEGV, while reading its last byte does not. (So the tests that hand guarded structs
    /// to the safe layer would crash if it read past `size`.)
    #[test]
    fn guard_page_faults_on_the_byte_after() {
        let guarded = Guarded::prefix(&[7u64; 3], 16);
        let read_in_child = |offset: usize| {
            // SAFETY: fork in a test process; the child only reads memory and calls _exit, both
            // async-signal-safe.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                // SAFETY: deliberately reads `offset` bytes into (or past) the copy.
                let byte = unsafe { std::ptr::read_volatile(guarded.as_ptr::<u8>().add(offset)) };
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(i32::from(byte)) };
            }
            let mut status = 0;
            // SAFETY: our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            status
        };
        let inside = read_in_child(guarded.size() - 1);
        assert!(libc::WIFEXITED(inside) && libc::WEXITSTATUS(inside) == 0, "the last byte reads: {inside:#x}");
        let past = read_in_child(guarded.size());
        assert!(libc::WIFSIGNALED(past) && libc::WTERMSIG(past) == libc::SIGSEGV, "the byte after faults: {past:#x}");
    }
}
