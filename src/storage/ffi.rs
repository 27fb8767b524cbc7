//! The calls into SQLite's C interface that rusqlite does not wrap: the
//! only module of the crate allowed `unsafe`, each block with the reason it
//! is sound.

#![allow(unsafe_code)]

use rusqlite::Connection;

/// Sets a connection's lookaside memory (SQLite's per-connection allocator
/// for small objects) to `slots` slots of `slot_bytes` bytes, allocated by
/// SQLite; SQLite's result code (SQLITE_BUSY while the connection uses its
/// lookaside already). Call it on a connection no other thread uses.
pub fn set_lookaside(conn: &Connection, slot_bytes: i32, slots: i32) -> i32 {
    // SAFETY: the handle is a valid open connection for the whole call (it
    // is borrowed), the connection is not shared while it is being set up,
    // and SQLITE_DBCONFIG_LOOKASIDE takes exactly (void*, int, int); a null
    // buffer asks SQLite to allocate the slots itself.
    unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            slot_bytes,
            slots,
        )
    }
}

/// The main database file of a connection, as SQLite has it open: reading
/// it through SQLite's own descriptor means no other descriptor of this
/// process is opened on the file and closed again, which would drop every
/// POSIX lock the process holds on it (SQLite's among them).
pub struct OpenFile(*mut rusqlite::ffi::sqlite3_file);

// SAFETY: the pointer is only used to call the file's xRead, which SQLite's
// unix VFS implements with pread on a descriptor that stays open while the
// connection does; nothing in it is tied to the thread that opened it.
unsafe impl Send for OpenFile {}
unsafe impl Sync for OpenFile {}

/// The main database file of `conn`, or `None` if SQLite gives none (an
/// in-memory database). It stays valid while the connection stays open:
/// the caller must see to that.
pub fn main_file(conn: &Connection) -> Option<OpenFile> {
    let mut file: *mut rusqlite::ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: the handle is a valid open connection while `conn` is
    // borrowed; SQLITE_FCNTL_FILE_POINTER writes one `sqlite3_file*` into
    // the pointer it is given, which points at `file`.
    let code = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast::<std::ffi::c_void>(),
        )
    };
    // SAFETY: a non-null file pointer SQLite gave points at an open file.
    let opened = !file.is_null() && unsafe { !(*file).pMethods.is_null() };
    (code == rusqlite::ffi::SQLITE_OK && opened).then_some(OpenFile(file))
}

impl OpenFile {
    /// Fills `buf` from the file at `offset`; SQLite's result code on
    /// failure (a read past the end is SQLITE_IOERR_SHORT_READ). The file
    /// must not be memory-mapped by the connection (`mmap_size` 0), and the
    /// connection must stay open meanwhile.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), i32> {
        let amount = i32::try_from(buf.len()).map_err(|_| rusqlite::ffi::SQLITE_TOOBIG)?;
        let offset = i64::try_from(offset).map_err(|_| rusqlite::ffi::SQLITE_TOOBIG)?;
        // SAFETY: the file is open (the caller keeps its connection open),
        // its methods table is SQLite's, and xRead writes at most `amount`
        // bytes into `buf`, which has that many. Without a memory map, the
        // unix VFS's xRead is a pread, which other threads may run at the
        // same time as the connection uses the file.
        let code = unsafe {
            let methods = (*self.0).pMethods;
            match (*methods).xRead {
                Some(read) => read(self.0, buf.as_mut_ptr().cast(), amount, offset),
                None => rusqlite::ffi::SQLITE_MISUSE,
            }
        };
        match code {
            rusqlite::ffi::SQLITE_OK => Ok(()),
            code => Err(code),
        }
    }
}
