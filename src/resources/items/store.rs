//! Item storage: the SQL over one tenant's connection, and the rules an item
//! must follow. Nothing here knows about tenants: the connection it is given
//! already belongs to exactly one.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use uuid::Uuid;

use crate::clock::{Micros, now_micros};
use crate::error::{Context, Error, Result};
pub use crate::pagination::Cursor;
use crate::storage::sqlite::Step;

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// The most revisions an item has: within the integers every JSON client
/// reads exactly (2^53), since the revision is in its etag.
pub const MAX_REVISION: i64 = (1 << 53) - 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub id: Uuid,
    pub title: String,
    pub description: String,
    pub completed: bool,
    pub create_time: Micros,
    pub update_time: Micros,
    pub revision: i64,
    pub due_time: Option<Micros>,
}

impl Item {
    /// The entity tag of this version of the item (AIP-154). Opaque to
    /// clients; it changes with every update.
    pub fn etag(&self) -> String {
        format!("r{}", self.revision)
    }
}

/// Checks a title: 1 to 200 characters, not only white space, no control
/// characters.
pub fn check_title(field: &'static str, title: &str) -> Result<()> {
    if title.trim().is_empty() {
        return Err(Error::invalid(
            field,
            "is required and must not be only white space",
        ));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_TITLE_CHARS} characters"),
        ));
    }
    if title.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Checks a description: at most 10,000 characters, no control characters
/// other than tab and line breaks.
pub fn check_description(field: &'static str, description: &str) -> Result<()> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    if description
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(Error::invalid(
            field,
            "must not contain control characters other than tab and line breaks",
        ));
    }
    Ok(())
}

pub struct NewItem {
    pub title: String,
    pub description: String,
    pub completed: bool,
    pub due_time: Option<Micros>,
}

/// The fields an update changes; `None` leaves a field as it is.
#[derive(Default)]
pub struct ItemChanges {
    pub title: Option<String>,
    pub description: Option<String>,
    pub completed: Option<bool>,
    /// `Some(None)` clears the due time.
    pub due_time: Option<Option<Micros>>,
}

/// The columns of an item, in the order [`item_from_row`] reads them.
macro_rules! columns {
    () => {
        "id, title, description, completed, create_time, update_time, revision, due_time"
    };
}
const COLUMNS: &str = columns!();

fn item_from_row(row: &Row<'_>) -> rusqlite::Result<Item> {
    Ok(Item {
        id: row.get(0)?,
        title: row.get(1)?,
        description: row.get(2)?,
        completed: row.get(3)?,
        create_time: row.get(4)?,
        update_time: row.get(5)?,
        revision: row.get(6)?,
        due_time: row.get(7)?,
    })
}

/// Stores a new item. Its id and its creation time come from one reading
/// of the clock, after the newest item's ([`crate::clock::reading_after`]):
/// in id order, creation times never go back, so the id order is the list
/// order.
pub fn insert(tx: &Transaction<'_>, new: NewItem) -> Result<Item> {
    let newest: Option<(Uuid, Micros)> = tx
        .prepare_cached("SELECT id, create_time FROM items ORDER BY id DESC LIMIT 1")
        .and_then(|mut statement| {
            statement
                .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .context(|| "reading the newest item".into())?;
    let now = crate::clock::reading_after(now_micros(), newest);
    if !crate::clock::is_valid(now) {
        return Err(Error::FailedPrecondition(
            "the tenant's newest item is dated at the end of time: no item can be newer".into(),
        ));
    }
    let item = Item {
        id: crate::clock::id_at(now),
        title: new.title,
        description: new.description,
        completed: new.completed,
        create_time: now,
        update_time: now,
        revision: 1,
        due_time: new.due_time,
    };
    tx.prepare_cached(concat!(
        "INSERT INTO items (",
        columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))
    .and_then(|mut statement| {
        statement.execute(params![
            item.id,
            item.title,
            item.description,
            item.completed,
            item.create_time,
            item.update_time,
            item.revision,
            item.due_time,
        ])
    })
    .context(|| "inserting an item".into())?;
    Ok(item)
}

pub fn get(conn: &Connection, id: Uuid) -> Result<Option<Item>> {
    conn.prepare_cached(concat!("SELECT ", columns!(), " FROM items WHERE id = ?1"))
        .and_then(|mut statement| statement.query_row([id], item_from_row).optional())
        .context(|| format!("reading item {id}"))
}

/// The order items are listed in, newest first, as the file keeps it: by id,
/// or, in a file whose ids and creation times disagree, by creation time and
/// id (see `keep_time_order_where_needed` in the items' schema).
#[derive(Clone, Copy)]
enum Order {
    ById,
    ByTime,
}

impl Order {
    fn of(conn: &Connection) -> Result<Self> {
        match super::schema::listed_by_id(conn) {
            Ok(true) => Ok(Order::ById),
            Ok(false) => Ok(Order::ByTime),
            Err(error) => Err(error).context(|| "reading the items' order".into()),
        }
    }

    /// The condition that a row comes after `?3` (a time) and `?4` (an id),
    /// and the `ORDER BY` clause.
    fn sql(self) -> (&'static str, &'static str) {
        match self {
            Order::ById => ("id < ?4", "ORDER BY id DESC"),
            Order::ByTime => (
                "(create_time, id) < (?3, ?4)",
                "ORDER BY create_time DESC, id DESC",
            ),
        }
    }
}

/// Up to `limit` items, newest first, starting after `after`, only those
/// whose `completed` equals the filter when one is given. Each combination
/// has its own statement so that SQLite walks the table's key or an index in
/// order and stops after `limit` rows.
pub fn list(
    conn: &Connection,
    completed: Option<bool>,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Vec<Item>> {
    let sql = list_sql(Order::of(conn)?, completed.is_some(), after.is_some());
    let mut statement = conn
        .prepare_cached(&sql)
        .context(|| "listing items".into())?;
    let rows = statement
        .query_map(
            params![
                completed,
                limit as i64,
                after.map(|c| c.create_time),
                after.map(|c| c.id),
            ],
            item_from_row,
        )
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .context(|| "listing items".into())?;
    Ok(rows)
}

/// The statement of [`list`]: `?1` the filter, `?2` the limit, `?3` and
/// `?4` the cursor's time and id.
fn list_sql(order: Order, filtered: bool, after: bool) -> String {
    let (after_sql, order) = order.sql();
    let filter = if filtered {
        "completed = ?1"
    } else {
        "?1 IS NULL"
    };
    let keyset = if after {
        after_sql
    } else {
        "?3 IS NULL AND ?4 IS NULL"
    };
    format!("SELECT {COLUMNS} FROM items WHERE {filter} AND {keyset} {order} LIMIT ?2")
}

/// Rows a step of a [`Listing`] reads at most.
const LIST_STEP_ROWS: usize = 128;
/// Items a step of a [`Search`] looks at, at most: about a millisecond.
const SEARCH_STEP_ROWS: i64 = 2048;

fn cursor_of(item: &Item) -> Cursor {
    Cursor {
        create_time: item.create_time,
        id: item.id,
    }
}

/// A page of [`list`] read in steps of at most [`LIST_STEP_ROWS`] rows, so
/// that a big page never keeps the tenant's other calls waiting for long.
pub struct Listing {
    completed: Option<bool>,
    after: Option<Cursor>,
    wanted: usize,
    pub items: Vec<Item>,
}

impl Listing {
    /// Up to `wanted` items, newest first, after `after`.
    pub fn new(completed: Option<bool>, after: Option<Cursor>, wanted: usize) -> Self {
        Listing {
            completed,
            after,
            wanted,
            items: Vec::new(),
        }
    }

    pub fn step(&mut self, conn: &Connection) -> Result<Step> {
        let asked = (self.wanted - self.items.len()).min(LIST_STEP_ROWS);
        let rows = list(conn, self.completed, self.after, asked)?;
        let exhausted = rows.len() < asked;
        self.after = rows.last().map(cursor_of).or(self.after);
        self.items.extend(rows);
        Ok(match exhausted || self.items.len() >= self.wanted {
            true => Step::Done,
            false => Step::More,
        })
    }
}

/// Up to `limit` items whose title contains `text` (ASCII letters in either
/// case; `%` and `_` are plain characters), newest first, only those whose
/// `completed` equals the filter when one is given. A search reads every
/// item of the tenant (titles are not indexed for substrings), so it is
/// made in steps of [`SEARCH_STEP_ROWS`] items.
pub struct Search {
    pattern: String,
    completed: Option<bool>,
    limit: usize,
    after: Option<Cursor>,
    pub found: Vec<Item>,
}

impl Search {
    pub fn new(text: &str, completed: Option<bool>, limit: usize) -> Self {
        let mut pattern = String::with_capacity(text.len() + 2);
        pattern.push('%');
        for c in text.chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        Search {
            pattern,
            completed,
            limit,
            after: None,
            found: Vec::new(),
        }
    }

    /// Looks at the next items, newest first; done once `limit` are found
    /// or every item was looked at.
    pub fn step(&mut self, conn: &Connection) -> Result<Step> {
        if self.found.len() >= self.limit {
            return Ok(Step::Done);
        }
        let (after_sql, order) = Order::of(conn)?.sql();
        let keyset = match self.after {
            Some(_) => after_sql,
            None => "?3 IS NULL AND ?4 IS NULL",
        };
        let sql = format!(
            "SELECT id, create_time,
                    title LIKE ?1 ESCAPE '\\' AND (?2 IS NULL OR completed = ?2)
             FROM items WHERE {keyset} {order} LIMIT ?5"
        );
        let mut statement = conn
            .prepare_cached(&sql)
            .context(|| "searching items".into())?;
        let mut rows = statement
            .query(params![
                self.pattern,
                self.completed,
                self.after.map(|c| c.create_time),
                self.after.map(|c| c.id),
                SEARCH_STEP_ROWS
            ])
            .context(|| "searching items".into())?;
        let (mut looked, mut hits) = (0, Vec::new());
        while let Some(row) = rows.next().context(|| "searching items".into())? {
            looked += 1;
            let id: Uuid = row.get(0).context(|| "searching items".into())?;
            self.after = Some(Cursor {
                create_time: row.get(1).context(|| "searching items".into())?,
                id,
            });
            if row.get::<_, bool>(2).context(|| "searching items".into())? {
                hits.push(id);
            }
        }
        drop(rows);
        for id in hits {
            if self.found.len() >= self.limit {
                break;
            }
            if let Some(item) = get(conn, id)? {
                self.found.push(item);
            }
        }
        Ok(
            match looked < SEARCH_STEP_ROWS || self.found.len() >= self.limit {
                true => Step::Done,
                false => Step::More,
            },
        )
    }
}

/// Applies `changes` to an item. With `expected_etag`, the update happens
/// only if the item is still at that version; otherwise it is ABORTED.
pub fn update(
    tx: &Transaction<'_>,
    id: Uuid,
    changes: ItemChanges,
    expected_etag: Option<&str>,
) -> Result<Item> {
    let mut item = get(tx, id)?.ok_or_else(|| not_found(id))?;
    if let Some(etag) = expected_etag
        && etag != item.etag()
    {
        return Err(Error::Aborted(format!(
            "item {id} has changed since etag {etag:?} was read (it is now at {:?}): \
             read it again and retry",
            item.etag()
        )));
    }
    if let Some(title) = changes.title {
        item.title = title;
    }
    if let Some(description) = changes.description {
        item.description = description;
    }
    if let Some(completed) = changes.completed {
        item.completed = completed;
    }
    if let Some(due_time) = changes.due_time {
        item.due_time = due_time;
    }
    item.update_time = now_micros().max(item.update_time);
    item.revision = item
        .revision
        .checked_add(1)
        .filter(|revision| *revision <= MAX_REVISION)
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "item {} has been updated the most times an item can be ({MAX_REVISION}): \
                 create a new item in its place",
                item.id
            ))
        })?;
    tx.prepare_cached(
        "UPDATE items SET title = ?2, description = ?3, completed = ?4, update_time = ?5,
                          revision = ?6, due_time = ?7
         WHERE id = ?1",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            id,
            item.title,
            item.description,
            item.completed,
            item.update_time,
            item.revision,
            item.due_time,
        ])
    })
    .context(|| format!("updating item {id}"))?;
    Ok(item)
}

pub fn delete(tx: &Transaction<'_>, id: Uuid) -> Result<()> {
    let deleted = tx
        .prepare_cached("DELETE FROM items WHERE id = ?1")
        .and_then(|mut statement| statement.execute([id]))
        .context(|| format!("deleting item {id}"))?;
    if deleted == 0 {
        return Err(not_found(id));
    }
    Ok(())
}

fn not_found(id: Uuid) -> Error {
    Error::NotFound(format!("item {id} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::schema;

    fn tenant_db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        let tenant = schema::Schema::assemble([
            &crate::resources::items::schema::SCHEMA,
            &crate::audit::TRAIL,
        ]);
        schema::migrate(&mut conn, tenant.migrations(), "test").unwrap();
        conn
    }

    fn query_plan(conn: &Connection, order: Order, completed: Option<bool>, after: bool) -> String {
        let sql = format!(
            "EXPLAIN QUERY PLAN {}",
            list_sql(order, completed.is_some(), after)
        );
        let mut statement = conn.prepare(&sql).unwrap();
        let details = statement
            .query_map(params![completed, 10i64, 1i64, Uuid::now_v7()], |row| {
                row.get::<_, String>(3)
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        details.join(" | ")
    }

    #[test]
    fn every_list_query_walks_the_key_or_an_index_without_sorting() {
        let conn = tenant_db();
        let time_ordered = tenant_db();
        time_ordered
            .execute_batch(&format!(
                "{}; {};",
                super::super::schema::NEWEST_SQL,
                super::super::schema::COMPLETED_NEWEST_SQL
            ))
            .unwrap();
        for (conn, order) in [(&conn, Order::ById), (&time_ordered, Order::ByTime)] {
            assert!(
                matches!(
                    (Order::of(conn).unwrap(), order),
                    (Order::ById, Order::ById) | (Order::ByTime, Order::ByTime)
                ),
                "the file's order is read from its indexes"
            );
            for completed in [None, Some(true)] {
                for after in [false, true] {
                    let plan = query_plan(conn, order, completed, after);
                    assert!(
                        !plan.contains("TEMP B-TREE"),
                        "{completed:?} {after} sorts: {plan}"
                    );
                    if completed.is_some() || matches!(order, Order::ByTime) {
                        assert!(
                            plan.contains("INDEX items_"),
                            "{completed:?} {after}: {plan}"
                        );
                    }
                }
            }
        }
    }

    /// The WAL frames (pages) `rows` small CreateItem writes append, each in a
    /// transaction of its own, as writes to many tenants are committed.
    fn pages_per_create(rows: usize) -> f64 {
        let dir = tempfile::TempDir::new().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        crate::storage::sqlite::set_wal(&conn).unwrap();
        let tenant = schema::Schema::assemble([
            &crate::resources::items::schema::SCHEMA,
            &crate::audit::TRAIL,
        ]);
        schema::migrate(&mut conn, tenant.migrations(), "test").unwrap();
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        for n in 0..rows {
            let tx = conn.transaction().unwrap();
            let item = insert(
                &tx,
                NewItem {
                    title: format!("Buy milk and bread, number {n:>5}"),
                    description: String::new(),
                    completed: false,
                    due_time: None,
                },
            )
            .unwrap();
            crate::audit::record_write(
                &tx,
                "CreateItem",
                item.id,
                "keys/0190f5d2-5b7a-7cc3-a1d4-3f7c2b9e8a10",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let frames: i64 = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
            .unwrap();
        frames as f64 / rows as f64
    }

    #[test]
    fn a_small_item_s_creation_writes_three_pages_and_a_half() {
        // The item's page, the completed index's and the audit trail's
        // (version 3 wrote eight: the rowid table, the index on its text id,
        // two list indexes, the audit row and its time index, and their
        // splits). A table keyed by the id is a b-tree of the index kind,
        // which SQLite rebalances across siblings when its last page fills,
        // where a rowid table just starts a new page: about 0.35 pages more
        // a write (1.35 for the item, 1.1 for the index, 1.05 for the trail).
        let pages = pages_per_create(2000);
        assert!(pages <= 3.6, "{pages:.2} pages per CreateItem");
    }

    #[test]
    fn an_item_at_its_last_revision_is_not_updated_again() {
        let mut conn = tenant_db();
        let tx = conn.transaction().unwrap();
        let item = insert(
            &tx,
            NewItem {
                title: "old".into(),
                description: String::new(),
                completed: false,
                due_time: None,
            },
        )
        .unwrap();
        tx.execute("UPDATE items SET revision = ?1", [MAX_REVISION - 1])
            .unwrap();
        let changes = || ItemChanges {
            completed: Some(true),
            ..Default::default()
        };
        let last = update(&tx, item.id, changes(), None).unwrap();
        assert_eq!(last.revision, MAX_REVISION);
        let refused = update(&tx, item.id, changes(), None).unwrap_err();
        assert!(
            matches!(refused, Error::FailedPrecondition(_)),
            "{refused:?}"
        );
        assert_eq!(get(&tx, item.id).unwrap().unwrap().revision, MAX_REVISION);
    }

    #[test]
    fn titles_and_descriptions_are_checked() {
        assert!(check_title("t", "Buy milk").is_ok());
        assert!(check_title("t", &"é".repeat(200)).is_ok());
        for bad in ["", "   ", "a\0b", "tab\there", &"x".repeat(201)] {
            assert!(check_title("t", bad).is_err(), "{bad:?}");
        }
        assert!(check_description("d", "line\nline\ttab").is_ok());
        assert!(check_description("d", &"x".repeat(10_000)).is_ok());
        assert!(check_description("d", &"x".repeat(10_001)).is_err());
        assert!(check_description("d", "nul\0").is_err());
    }
}
