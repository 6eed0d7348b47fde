//! Shared arrays: one copy of plain data in shared memory that the session and every rank
//! on the kernel's host map, instead of a copy per rank.
//!
//! An [`Array`] is a file in `/dev/shm` named after the kernel and the array's name
//! (`ranch-<kernel pid>-array-<name>`): the kernel's janitor removes it with the kernel's
//! other segments, however the kernel ends. It is created with its memory reserved (a full
//! `/dev/shm` is an error then, never a `SIGBUS` later), starts zeroed, and lives as long as
//! the `Array` that created it: dropping that one removes the name (mappings stay valid
//! until they are dropped too).
//!
//! Sending an `Array` to ranks (a `%%ranch` cell naming it, `%px_push`) sends its name: the
//! rank attaches to the same memory. Memory model: the bytes are shared, nothing more;
//! ranks that write must write disjoint parts, or take turns separated by
//! `ranch::comm().barrier()`; the session sees what the ranks wrote once their cell is over.
//!
//! Ranks of a launch on other hosts get one copy per host ([`host_copy`]); their writes stay
//! on their host.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

mod host_copy;

const O_NOFOLLOW: i32 = 0o400000;

/// Names the kernel's segments: the kernel sets it for its session and ranks.
pub const KERNEL_ENV: &str = "RANCH_KERNEL_PID";

/// Plain data: any bit pattern of its size is a value, and it holds no pointers. Implemented
/// for the numeric types and arrays of them.
///
/// # Safety
/// Implement only for types whose every bit pattern is valid and that own no memory.
pub unsafe trait Plain: Copy + Send + Sync + 'static {
    /// A tag telling element types apart when an array is attached.
    const TAG: &'static str;
}

macro_rules! plain {
    ($($t:ty),*) => {
        $(
            // SAFETY: a numeric type: every bit pattern is a value, no pointers.
            unsafe impl Plain for $t { const TAG: &'static str = stringify!($t); }
        )*
        /// The names of the element types that are [`Plain`] (besides arrays of them), for
        /// the kernel to tell which session vectors can be shared.
        pub const PLAIN_TYPES: &[&str] = &[$(stringify!($t)),*];
    };
}
plain!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);

// SAFETY: an array of plain data is plain data.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {
    const TAG: &'static str = T::TAG; // the length is checked through the element size
}

/// Why an array could not be made or attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedError(String);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SharedError {}

fn error(msg: impl Into<String>) -> SharedError {
    SharedError(msg.into())
}

/// The header before the data: magic, element size, length, and the element type's tag.
pub(crate) const HEADER: usize = 4096;
pub(crate) const MAGIC: u64 = 0x3141_5241_4843_4e52; // "RNCHARA1"

/// A typed array in shared memory (see the module's documentation).
pub struct Array<T: Plain> {
    name: String,
    base: *mut u8,
    len: usize,
    map_len: usize,
    /// Made by this process: its drop removes the name.
    owner: Option<std::path::PathBuf>,
    _t: std::marker::PhantomData<T>,
}

// SAFETY: the mapping is owned by this value; cross-process access is the user's to order
// (see the module's memory model), and in-process access follows `&`/`&mut`.
unsafe impl<T: Plain> Send for Array<T> {}
unsafe impl<T: Plain> Sync for Array<T> {}

/// The file of array `name` of this kernel.
pub(crate) fn path_of(name: &str) -> Result<String, SharedError> {
    let ok = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(error(format!("`{name}` is not an array name: use 1 to 64 letters, digits or `_`")));
    }
    let kernel = std::env::var(KERNEL_ENV).ok().filter(|k| k.parse::<u32>().is_ok()).unwrap_or_else(|| std::process::id().to_string());
    Ok(format!("/dev/shm/ranch-{kernel}-array-{name}"))
}

impl<T: Plain> Array<T> {
    /// A new array of `len` zeroed elements named `name`, its memory reserved now.
    pub fn create(name: &str, len: usize) -> Result<Array<T>, SharedError> {
        let path = path_of(name)?;
        let bytes = len.checked_mul(size_of::<T>()).and_then(|b| b.checked_add(HEADER)).ok_or_else(|| error("the array is too large"))?;
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                error(format!("a shared array `{name}` exists already (drop it first, or attach to it)"))
            } else {
                error(format!("cannot create the shared array `{name}` ({path}): {e}"))
            }
        })?;
        let made = (|| {
            crate::comm::shm::reserve(&file, bytes as u64).map_err(|e| {
                error(format!(
                    "cannot reserve {} MiB for the shared array `{name}` in /dev/shm: {e}. Free /dev/shm or make it larger",
                    bytes >> 20
                ))
            })?;
            let mut header = Vec::with_capacity(64);
            for word in [MAGIC, size_of::<T>() as u64, len as u64] {
                header.extend_from_slice(&word.to_ne_bytes());
            }
            header.extend_from_slice(T::TAG.as_bytes());
            file.write_all_at(&header, 0).map_err(|e| error(format!("cannot write the shared array `{name}`: {e}")))?;
            map(&file, name, len, bytes)
        })();
        match made {
            Ok(mut array) => {
                array.owner = Some(path.into());
                Ok(array)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// A new array named `name` holding a copy of `data`.
    pub fn from_slice(name: &str, data: &[T]) -> Result<Array<T>, SharedError> {
        let mut array = Array::create(name, data.len())?;
        array.as_mut_slice().copy_from_slice(data);
        Ok(array)
    }

    /// The array named `name`, made by the session or another rank of this host. A rank of
    /// a launch on another host than the kernel's gets this host's copy: made and filled
    /// from the kernel's channel by the first rank of the launch that asks on this host,
    /// mapped by the others (see the module's documentation).
    pub fn attach(name: &str) -> Result<Array<T>, SharedError> {
        let path = path_of(name)?;
        match OpenOptions::new().read(true).write(true).custom_flags(O_NOFOLLOW).open(&path) {
            Ok(file) => Array::open(file, name, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && crate::channel::address().is_some() => host_copy::attach(name),
            Err(e) => Err(error(format!(
                "no shared array `{name}` on this host ({e}): arrays live on the kernel's host, made with \
                 `%ranch_share {name}` or `ranch::shared::Array::create`"
            ))),
        }
    }

    /// Maps the array file `file` (at `path`) after checking it is this user's own, a ranch
    /// array, of element type `T`, and as long as its header says.
    fn open(file: std::fs::File, name: &str, path: &str) -> Result<Array<T>, SharedError> {
        let meta = file.metadata().map_err(|e| error(format!("cannot read the shared array `{name}`: {e}")))?;
        if meta.uid() != crate::comm::shm::ffi::euid() || meta.mode() & 0o077 != 0 {
            return Err(error(format!("{path} is not a shared array of this user's (its owner or mode is another's): not used")));
        }
        let mut header = [0u8; 64];
        file.read_exact_at(&mut header, 0).map_err(|e| error(format!("cannot read the shared array `{name}`: {e}")))?;
        let word = |i: usize| u64::from_ne_bytes(header[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let tag = std::str::from_utf8(&header[24..]).unwrap_or("").trim_end_matches('\0');
        if word(0) != MAGIC {
            return Err(error(format!("{path} is not a ranch shared array")));
        }
        if word(1) != size_of::<T>() as u64 || tag != T::TAG {
            return Err(error(format!(
                "the shared array `{name}` holds `{tag}` ({} bytes each), not `{}` ({} bytes)",
                word(1),
                T::TAG,
                size_of::<T>()
            )));
        }
        let len = word(2) as usize;
        let bytes =
            len.checked_mul(size_of::<T>()).and_then(|b| b.checked_add(HEADER)).ok_or_else(|| error("the array's header is corrupt"))?;
        if meta.len() < bytes as u64 {
            return Err(error(format!("the shared array `{name}` is {} bytes, shorter than its {len} elements", meta.len())));
        }
        map(&file, name, len, bytes)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the mapping holds `len` elements after the header, aligned to a page.
        unsafe { std::slice::from_raw_parts(self.base.add(HEADER).cast::<T>(), self.len) }
    }

    /// The elements to write: other processes see the writes (see the memory model).
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as `as_slice`; `&mut self` makes it this process's only view.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(HEADER).cast::<T>(), self.len) }
    }
}

/// Maps `bytes` of `file` as array `name` of `len` elements (not its owner).
fn map<T: Plain>(file: &std::fs::File, name: &str, len: usize, bytes: usize) -> Result<Array<T>, SharedError> {
    use crate::comm::shm::ffi;
    // SAFETY: a shared mapping of a file we opened read-write, of the length it has.
    let base = unsafe { ffi::mmap(std::ptr::null_mut(), bytes, ffi::PROT_READ_WRITE, ffi::MAP_SHARED, file.as_raw_fd(), 0) };
    if base as isize == -1 {
        return Err(error(format!("cannot map the shared array `{name}`: {}", std::io::Error::last_os_error())));
    }
    Ok(Array { name: name.to_string(), base: base.cast(), len, map_len: bytes, owner: None, _t: std::marker::PhantomData })
}

impl<T: Plain> Drop for Array<T> {
    fn drop(&mut self) {
        // SAFETY: base/map_len come from a successful mmap.
        unsafe { crate::comm::shm::ffi::munmap(self.base.cast(), self.map_len) };
        if let Some(path) = &self.owner {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl<T: Plain> std::ops::Deref for Array<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let head = &self.as_slice()[..self.len.min(SHOWN)];
        write!(f, "shared::Array<{}>(\"{}\", {} elements: {head:?}", T::TAG, self.name, self.len)?;
        f.write_str(if self.len > SHOWN { " ...)" } else { ")" })
    }
}

/// Sent as its name: the receiver attaches to the same memory.
impl<T: Plain> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.name, self.len).serialize(s)
    }
}

impl<'de, T: Plain> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, len): (String, usize) = Deserialize::deserialize(d)?;
        let array = Array::attach(&name).map_err(serde::de::Error::custom)?;
        if array.len != len {
            return Err(serde::de::Error::custom(format!("the shared array `{name}` has {} elements, not {len}", array.len)));
        }
        Ok(array)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(tag: &str) -> String {
        format!("t{}_{tag}", std::process::id())
    }

    #[test]
    fn an_array_is_one_memory_for_every_mapping_and_goes_with_its_maker() {
        let name = unique("one");
        let mut made = Array::<f64>::from_slice(&name, &[1.0, 2.0, 3.0]).unwrap();
        let seen = Array::<f64>::attach(&name).unwrap();
        assert_eq!(&seen[..], [1.0, 2.0, 3.0]);
        made.as_mut_slice()[1] = 20.0;
        assert_eq!(seen[1], 20.0, "no copy: a write is seen through the other mapping");
        let sent: Array<f64> = rmp_serde::from_slice(&rmp_serde::to_vec(&made).unwrap()).unwrap();
        assert_eq!(&sent[..], [1.0, 20.0, 3.0], "sent as its name, attached on arrival");
        assert!(format!("{seen:?}").starts_with(&format!("shared::Array<f64>(\"{name}\", 3 elements: [1.0, 20.0, 3.0]")));
        let e = Array::<u32>::attach(&name).unwrap_err().to_string();
        assert!(e.contains("holds `f64`") && e.contains("not `u32`"), "{e}");
        assert!(Array::<f64>::create(&name, 1).unwrap_err().to_string().contains("exists already"));
        drop(made);
        assert!(Array::<f64>::attach(&name).unwrap_err().to_string().contains("no shared array"), "its maker removed its name");
        assert_eq!(seen[1], 20.0, "a mapping stays valid after the name is gone");
    }

    #[test]
    fn names_are_checked_and_memory_is_reserved_at_creation() {
        assert!(Array::<u8>::create("../x", 1).unwrap_err().to_string().contains("not an array name"));
        let e = Array::<u8>::create(&unique("huge"), 1 << 50).unwrap_err().to_string();
        assert!(e.contains("cannot reserve") && e.contains("/dev/shm"), "{e}");
        assert!(Array::<u8>::attach(&unique("huge")).is_err(), "nothing is left of a failed creation");
    }
}
