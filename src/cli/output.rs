//! How the client commands print what the server answered: an aligned table
//! for people, or one JSON document for scripts.
//!
//! Each kind of answer says once what its fields are ([`Record`]); a list
//! prints as a table with a header row, a single answer as one field per
//! line, and in JSON as an array or an object. Times are RFC 3339 in UTC
//! (to the second in tables); sizes are bytes in JSON and binary units in
//! tables.

use std::io::Write;

use prost_types::Timestamp;
use serde_json::Value;

use super::{Failure, Outcome};

/// The `--output` formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Something a command prints: its labelled fields for a table, and the
/// whole of it as JSON.
pub trait Record {
    /// The fields shown in a table, in order, with their labels.
    fn fields(&self) -> Vec<(&'static str, String)>;
    /// Every field, named as in the protos.
    fn to_json(&self) -> Value;
}

/// Prints one record: one field per line, or a JSON object.
pub fn print_one(format: Format, record: &impl Record) -> Outcome {
    write_stdout(&render_one(format, record))
}

/// One record as [`print_one`] prints it.
pub fn render_one(format: Format, record: &impl Record) -> String {
    match format {
        Format::Table => fields_table(&record.fields()),
        Format::Json => json_text(&record.to_json()),
    }
}

/// Prints records: a table with a header row (nothing for no records), or a
/// JSON array.
pub fn print_list<R: Record>(format: Format, records: &[R]) -> Outcome {
    match format {
        Format::Table => {
            let rows: Vec<_> = records.iter().map(Record::fields).collect();
            let Some(first) = rows.first() else {
                return Ok(());
            };
            let header = first
                .iter()
                .map(|(label, _)| label.to_uppercase())
                .collect();
            let cells = rows
                .iter()
                .map(|row| row.iter().map(|(_, value)| value.clone()).collect());
            write_stdout(&table(std::iter::once(header).chain(cells)))
        }
        Format::Json => print_json(&Value::Array(records.iter().map(Record::to_json).collect())),
    }
}

/// Prints one JSON document.
pub fn print_json(value: &Value) -> Outcome {
    write_stdout(&json_text(value))
}

/// A JSON document, pretty, with a final newline.
fn json_text(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("a JSON value serializes");
    text.push('\n');
    text
}

/// Writes to standard output. A reader that went away (`| head`) is not a
/// failure of the command.
pub fn write_stdout(text: &str) -> Outcome {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::Failed(
            format!("cannot write to standard output: {error}"),
        )),
        _ => Ok(()),
    }
}

/// Rows of cells as lines of aligned columns, two spaces apart.
fn table(rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = Vec::new();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(i) {
                Some(known) => *known = (*known).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut text = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i] - cell.chars().count();
            line.extend(std::iter::repeat_n(' ', pad));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// One field per line: its label, then its value, aligned.
fn fields_table(fields: &[(&'static str, String)]) -> String {
    table(
        fields
            .iter()
            .map(|(label, value)| vec![format!("{label}:"), value.clone()]),
    )
}

/// A time for a table: RFC 3339, to the second; empty if unset.
pub fn time_cell(time: Option<&Timestamp>) -> String {
    time.map(|t| {
        Timestamp {
            seconds: t.seconds,
            nanos: 0,
        }
        .to_string()
    })
    .unwrap_or_default()
}

/// A time for JSON: RFC 3339 with the server's precision, or null.
pub fn time_json(time: Option<&Timestamp>) -> Value {
    time.map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// A size for a table, in binary units.
pub fn size_cell(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let text = table(
            [
                vec!["ID".to_owned(), "NAME".into(), "STATE".into()],
                vec!["1".into(), "acme-corporation".into(), "active".into()],
                vec!["22".into(), "é".into(), "".into()],
            ]
            .into_iter(),
        );
        assert_eq!(
            text,
            "ID  NAME              STATE\n\
             1   acme-corporation  active\n\
             22  é\n"
        );
    }

    #[test]
    fn a_single_record_prints_one_field_a_line() {
        let text = fields_table(&[("id", "7".into()), ("display name", "Acme".into())]);
        assert_eq!(text, "id:            7\ndisplay name:  Acme\n");
    }

    #[test]
    fn table_times_drop_the_fraction_and_json_times_keep_it() {
        let time = Timestamp {
            seconds: 1_795_000_000,
            nanos: 123_456_000,
        };
        assert_eq!(time_cell(Some(&time)), "2026-11-18T11:06:40Z");
        assert_eq!(
            time_json(Some(&time)),
            Value::String("2026-11-18T11:06:40.123456Z".into())
        );
        assert_eq!(time_cell(None), "");
        assert_eq!(time_json(None), Value::Null);
    }
}
