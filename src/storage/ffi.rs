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
