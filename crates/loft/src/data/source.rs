//! Dataset files → records. Formats by extension: `.jsonl` (one object per line), `.json` (an array of
//! objects), `.csv` (a header row, then one record per row), `.txt` (one document per file, or one per
//! blank-line-separated paragraph), `.parquet` (Hugging Face datasets' format: one record per row, uncompressed
//! or Snappy). Each record remembers its file and line (for Parquet: its row, from 1) for error messages.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{Error, Result};

/// One row of a dataset: its fields, and where it came from (`line` is 1-based: the JSONL line, the line on
/// which a JSON array element or CSV row starts, or a text paragraph's first line).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub file: PathBuf,
    pub line: usize,
    pub fields: Map<String, Value>,
}

impl Record {
    /// `file:line`, as error messages name a record.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }

    /// The record's field names, comma-separated, for error messages.
    pub fn field_names(&self) -> String {
        let names: Vec<&str> = self.fields.keys().map(String::as_str).collect();
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names.join(", ")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Jsonl,
    Json,
    Csv,
    Text,
    Parquet,
}

impl SourceFormat {
    /// The format a file's extension names (`.jsonl`/`.ndjson`, `.json`, `.csv`, `.txt`/`.text`/`.md`).
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Some(SourceFormat::Jsonl),
            "json" => Some(SourceFormat::Json),
            "csv" => Some(SourceFormat::Csv),
            "txt" | "text" | "md" => Some(SourceFormat::Text),
            "parquet" => Some(SourceFormat::Parquet),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// Read every file as this format instead of going by extension.
    pub format: Option<SourceFormat>,
    /// Text files: one record per paragraph (split on blank lines) instead of one per file.
    pub split_paragraphs: bool,
    /// Only the first N records of all the files, in order.
    pub max_records: Option<usize>,
}

/// The records of every file the paths name, in order (a path may hold `*` and `?` in its file-name part;
/// matches are sorted). Errors when a pattern matches nothing or the dataset has no record.
pub fn read_records(paths: &[PathBuf], options: &SourceOptions) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut files = Vec::new();
    for p in paths {
        files.extend(expand_glob(p)?);
    }
    for f in &files {
        records.extend(read_file(f, options)?);
        if let Some(n) = options.max_records {
            if records.len() >= n {
                records.truncate(n);
                break;
            }
        }
    }
    if records.is_empty() {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(Error::hinted(
            format!(
                "the dataset is empty: no records in {}",
                if names.is_empty() { "(no files)".into() } else { names.join(", ") }
            ),
            "check the data paths and that the files hold records",
        ));
    }
    Ok(records)
}

/// The records of one file.
pub fn read_file(path: &Path, options: &SourceOptions) -> Result<Vec<Record>> {
    let format = match options.format.or_else(|| SourceFormat::from_path(path)) {
        Some(f) => f,
        None => {
            return Err(Error::hinted(
                format!("{}: unknown dataset format", path.display()),
                "name the file .jsonl, .json, .csv, .txt or .parquet, or set the format",
            ))
        }
    };
    match format {
        SourceFormat::Jsonl => parse_jsonl(path, &read_text(path)?),
        SourceFormat::Json => parse_json_array(path, &read_text(path)?),
        SourceFormat::Csv => parse_csv(path, &read_text(path)?),
        SourceFormat::Text => Ok(parse_text(path, &read_text(path)?, options.split_paragraphs)),
        SourceFormat::Parquet => parse_parquet(path),
    }
}

/// A text file without its byte-order mark.
fn read_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

fn at(path: &Path, line: usize) -> PathBuf {
    PathBuf::from(format!("{}:{line}", path.display()))
}

fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(raw).map_err(|e| {
            // serde_json counts lines within the one line it was given: report file:line:column instead.
            let message = e.to_string();
            let message =
                message.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())).unwrap_or(&message);
            Error::format(format!("{}:{line}:{}", path.display(), e.column()), message)
                .with_hint("a .jsonl file holds one JSON object per line")
        })?;
        out.push(Record { file: path.to_path_buf(), line, fields: into_object(path, line, value)? });
    }
    Ok(out)
}

fn into_object(path: &Path, line: usize, value: Value) -> Result<Map<String, Value>> {
    match value {
        Value::Object(m) => Ok(m),
        other => Err(Error::format(at(path, line), format!("expected a JSON object, found {}", kind(&other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_json_array(path: &Path, text: &str) -> Result<Vec<Record>> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::format(at(path, e.line()), format!("{e}")))?;
    let Value::Array(items) = value else {
        return Err(Error::format(path, format!("expected a JSON array of objects, found {}", kind(&value))));
    };
    let starts = array_element_lines(text);
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let line = starts.get(i).copied().unwrap_or(1);
            Ok(Record { file: path.to_path_buf(), line, fields: into_object(path, line, v)? })
        })
        .collect()
}

/// The line on which each element of a (valid) top-level JSON array starts.
fn array_element_lines(text: &str) -> Vec<usize> {
    let (mut depth, mut line, mut in_string, mut escaped, mut expect_value) = (0usize, 1usize, false, false, false);
    let mut starts = Vec::new();
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if depth == 1 && expect_value && !c.is_whitespace() && c != ']' {
            starts.push(line);
            expect_value = false;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth == 1 {
                    expect_value = true;
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect_value = true,
            _ => {}
        }
    }
    starts
}

/// RFC 4180 CSV: a header row names the fields; quoted fields may hold commas, `""` and newlines.
fn parse_csv(path: &Path, text: &str) -> Result<Vec<Record>> {
    let rows = csv_rows(path, text)?;
    let mut rows = rows.into_iter();
    let Some((_, header)) = rows.next() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (line, row) in rows {
        if row.len() == 1 && row[0].is_empty() {
            continue;
        }
        if row.len() != header.len() {
            return Err(Error::format(
                at(path, line),
                format!(
                    "expected {} fields (as the header names: {}), found {}",
                    header.len(),
                    header.join(", "),
                    row.len()
                ),
            ));
        }
        let fields = header.iter().cloned().zip(row.into_iter().map(Value::String)).collect();
        out.push(Record { file: path.to_path_buf(), line, fields });
    }
    Ok(out)
}

/// CSV rows with the line each starts on.
fn csv_rows(path: &Path, text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut rows = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let (mut line, mut row_line, mut quoted, mut field_started) = (1usize, 1usize, false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if !field_started => {
                quoted = true;
                field_started = true;
            }
            ',' => {
                row.push(std::mem::take(&mut field));
                field_started = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push((row_line, std::mem::take(&mut row)));
                field_started = false;
                line += 1;
                row_line = line;
            }
            _ => {
                field.push(c);
                field_started = true;
            }
        }
    }
    if quoted {
        return Err(Error::format(at(path, row_line), "unterminated quoted field"));
    }
    if field_started || !row.is_empty() {
        row.push(field);
        rows.push((row_line, row));
    }
    Ok(rows)
}

/// Parquet: each row as a JSON object (strings, numbers, lists and structs as JSON has them).
fn parse_parquet(path: &Path) -> Result<Vec<Record>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| parquet_error(path, e))?;
    let mut out = Vec::new();
    for (i, row) in reader.get_row_iter(None).map_err(|e| parquet_error(path, e))?.enumerate() {
        let row = row.map_err(|e| parquet_error(&at(path, i + 1), e))?;
        out.push(Record { file: path.to_path_buf(), line: i + 1, fields: parquet_row(&row) });
    }
    Ok(out)
}

fn parquet_row(row: &parquet::record::Row) -> Map<String, Value> {
    row.get_column_iter().map(|(name, field)| (name.clone(), parquet_value(field))).collect()
}

/// A Parquet value as JSON: strings, numbers, booleans, lists and structs as they are; anything else (dates,
/// decimals, bytes) as the text Parquet's reader prints for it.
fn parquet_value(field: &parquet::record::Field) -> Value {
    use parquet::record::Field;
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(x) => Value::from(*x),
        Field::Short(x) => Value::from(*x),
        Field::Int(x) => Value::from(*x),
        Field::Long(x) => Value::from(*x),
        Field::UByte(x) => Value::from(*x),
        Field::UShort(x) => Value::from(*x),
        Field::UInt(x) => Value::from(*x),
        Field::ULong(x) => Value::from(*x),
        Field::Float(x) => Value::from(f64::from(*x)),
        Field::Double(x) => Value::from(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Group(row) => Value::Object(parquet_row(row)),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(parquet_value).collect()),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| match k {
                    Field::Str(s) => (s.clone(), parquet_value(v)),
                    other => (other.to_string(), parquet_value(v)),
                })
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> Error {
    let codec = e.to_string().to_lowercase().contains("codec");
    let e = Error::caused(format!("{}: not a readable Parquet file", path.display()), e);
    if codec {
        e.with_hint("loft reads uncompressed and Snappy Parquet; rewrite the file with Snappy or as JSONL")
    } else {
        e
    }
}

/// Text: the whole file as one `text` record, or one per paragraph.
fn parse_text(path: &Path, text: &str, split_paragraphs: bool) -> Vec<Record> {
    let record = |line: usize, body: &str| {
        let mut fields = Map::new();
        fields.insert("text".into(), Value::String(body.to_string()));
        Record { file: path.to_path_buf(), line, fields }
    };
    if !split_paragraphs {
        return if text.trim().is_empty() { Vec::new() } else { vec![record(1, text)] };
    }
    let mut out = Vec::new();
    let mut para: Vec<&str> = Vec::new();
    let mut start = 0;
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            if !para.is_empty() {
                out.push(record(start, &para.join("\n")));
                para.clear();
            }
        } else {
            if para.is_empty() {
                start = i + 1;
            }
            para.push(l);
        }
    }
    if !para.is_empty() {
        out.push(record(start, &para.join("\n")));
    }
    out
}

/// The files a path names: itself, or, when its file-name part holds `*` or `?`, the sorted matches in its
/// folder. A pattern that matches nothing is an error.
pub fn expand_glob(pattern: &Path) -> Result<Vec<PathBuf>> {
    let name = pattern.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.contains(['*', '?']) {
        return Ok(vec![pattern.to_path_buf()]);
    }
    let dir = match pattern.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.to_str().is_some_and(|d| d.contains(['*', '?'])) {
        return Err(Error::hinted(
            format!("{}: wildcards are supported in the file name only", pattern.display()),
            "list each folder, e.g. data/a/*.jsonl data/b/*.jsonl",
        ));
    }
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard_match(name, n)))
        .map(|e| dir.join(e.file_name()))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(Error::hinted(format!("{}: no file matches", pattern.display()), "check the path and pattern"));
    }
    Ok(out)
}

/// `*` matches any run of characters, `?` any one character.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ni));
            pi += 1;
        } else if let Some((bp, bn)) = backtrack {
            pi = bp + 1;
            ni = bn + 1;
            backtrack = Some((bp, bn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.jsonl", "a.jsonl"));
        assert!(wildcard_match("part-??.csv", "part-01.csv"));
        assert!(!wildcard_match("part-??.csv", "part-1.csv"));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("*.json", "a.jsonl"));
    }

    #[test]
    fn json_array_lines() {
        let text = "[\n  {\"a\": \"x,]\"},\n  {\"a\": [1, 2]}\n  ,\n{\"b\": {}}]";
        assert_eq!(array_element_lines(text), vec![2, 3, 5]);
    }
}
