//! Reading committed frames out of a tenant's SQLite WAL, the segment objects
//! they are shipped in, and the rebuild of a database from a snapshot and
//! segments.
//!
//! Replication works on SQLite's WAL file format
//! (<https://www.sqlite.org/fileformat2.html#walformat>) rather than through
//! SQLite: a tenant's one connection holds its database in exclusive locking
//! mode, so there is no `-shm` wal-index to ask, and the replicator reads the
//! `-wal` file itself while it holds the tenant (no commit or checkpoint runs
//! meanwhile). Every frame read is checked against the WAL's salts and against
//! the cumulative checksum chained from the last position shipped, so a WAL
//! restarted, truncated or overwritten behind the replicator's back is noticed
//! rather than shipped. Only whole transactions are read (up to a commit
//! frame), so no restore ever sees half a commit.
//!
//! A [`Segment`] is one object in object storage: the frames of one read and
//! the time of each commit among them (for point-in-time restores),
//! zstd-compressed behind a magic and a format version. Decoding treats the
//! bytes as hostile, since a bucket lies outside what the process can vouch
//! for: every size is bounded, and the header is checked against the data
//! before it is believed.
//!
//! [`Rebuild`] is the restore side: it writes the pages of segments onto a
//! copy of a snapshot, whole commits only, as SQLite's own checkpoint would,
//! then cuts the file to the size of the last commit applied.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

const WAL_HEADER_BYTES: usize = 32;
/// Page number, database size after commit, the two salts, the two words
/// of the cumulative checksum.
const FRAME_HEADER_BYTES: usize = 24;
/// What a frame keeps of its header once read: its page number and the
/// database size after its commit. These are the header bytes SQLite's
/// checksum covers, so a record (these bytes, then the page) is checksummed
/// as it lies in memory.
const RECORD_HEADER_BYTES: usize = 8;
/// The magic's low bit names the byte order of the checksum's words.
const WAL_MAGIC_LITTLE_ENDIAN: u32 = 0x377f_0682;
const WAL_MAGIC_BIG_ENDIAN: u32 = 0x377f_0683;
const WAL_FORMAT_VERSION: u32 = 3_007_000;

const SEGMENT_MAGIC: &[u8; 8] = b"TNTRYSEG";
/// Written after the magic; a new layout takes a new number, so that a
/// restore by an older build refuses segments it would misread.
const SEGMENT_VERSION: u8 = 1;
/// zstd's own default: pages compress well at it, and a segment of a few
/// MiB compresses in milliseconds while the tenant waits.
const SEGMENT_ZSTD_LEVEL: i32 = 3;
/// The most a segment's header and frames may take, decompressed. Segments
/// hold a few MiB; the bound keeps a damaged or hostile object from making a
/// restore allocate without end, and encoding refuses a segment over it,
/// which no restore would read.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// A position in one WAL: after frame `frame` (0: before its first frame),
/// whose cumulative checksum is `checksum` (at frame 0, the WAL header's).
/// The salts name the WAL: SQLite changes them whenever it restarts the WAL
/// from its first frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalPosition {
    pub salts: [u32; 2],
    pub frame: u32,
    pub checksum: [u32; 2],
}

/// The header of a WAL file, as [`read_header`] parses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    /// Whether the checksum reads the bytes as big-endian words: SQLite
    /// uses the byte order of the machine that wrote the WAL.
    pub big_endian_checksums: bool,
    pub page_size: u32,
    pub checkpoint_sequence: u32,
    pub salts: [u32; 2],
    pub checksum: [u32; 2],
}

impl WalHeader {
    /// The position before this WAL's first frame.
    pub fn start(&self) -> WalPosition {
        WalPosition {
            salts: self.salts,
            frame: 0,
            checksum: self.checksum,
        }
    }

    fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.page_size as usize
    }

    /// Where frame `frame` ends in the file (where frame 0 "ends": the header).
    fn end_of(&self, frame: u32) -> u64 {
        WAL_HEADER_BYTES as u64 + u64::from(frame) * self.frame_bytes() as u64
    }
}

/// Parses and checks the header at the start of a WAL file.
pub fn read_header(wal: &[u8]) -> Result<WalHeader> {
    let Some(bytes) = wal.get(..WAL_HEADER_BYTES) else {
        return Err(Error::DataLoss(format!(
            "a WAL header takes {WAL_HEADER_BYTES} bytes, not {}",
            wal.len()
        )));
    };
    let big_endian_checksums = match be32(bytes, 0) {
        WAL_MAGIC_LITTLE_ENDIAN => false,
        WAL_MAGIC_BIG_ENDIAN => true,
        magic => return Err(Error::DataLoss(format!("bad WAL magic {magic:#010x}"))),
    };
    let version = be32(bytes, 4);
    if version != WAL_FORMAT_VERSION {
        return Err(Error::DataLoss(format!(
            "WAL format version {version}, not {WAL_FORMAT_VERSION}"
        )));
    }
    let header = WalHeader {
        big_endian_checksums,
        page_size: be32(bytes, 8),
        checkpoint_sequence: be32(bytes, 12),
        salts: [be32(bytes, 16), be32(bytes, 20)],
        checksum: [be32(bytes, 24), be32(bytes, 28)],
    };
    if !is_page_size(header.page_size) {
        return Err(Error::DataLoss(format!(
            "WAL page size {} is not a power of two from 512 to 65536",
            header.page_size
        )));
    }
    if wal_checksum(big_endian_checksums, [0, 0], &bytes[..24]) != header.checksum {
        return Err(Error::DataLoss(
            "the WAL header's checksum does not match".into(),
        ));
    }
    Ok(header)
}

/// Frames held in memory as one buffer of records (page number and database
/// size after commit, big-endian, then the page): a read of a few MiB is one
/// allocation, and is compressed into a segment without being copied.
#[derive(Clone, PartialEq, Eq)]
pub struct Frames {
    page_size: u32,
    records: Vec<u8>,
}

impl Frames {
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    pub fn len(&self) -> usize {
        self.records.len() / record_bytes(self.page_size)
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Frame<'_>> {
        self.records
            .chunks_exact(record_bytes(self.page_size))
            .map(Frame::parse)
    }
}

/// Printing megabytes of pages would drown any log or failed assertion.
impl fmt::Debug for Frames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frames")
            .field("page_size", &self.page_size)
            .field("len", &self.len())
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub page_number: u32,
    /// The database size in pages after the commit this frame ends; 0 if it
    /// ends none.
    pub commit_size: u32,
    pub page: &'a [u8],
}

impl<'a> Frame<'a> {
    fn parse(record: &'a [u8]) -> Self {
        Frame {
            page_number: be32(record, 0),
            commit_size: be32(record, 4),
            page: &record[RECORD_HEADER_BYTES..],
        }
    }
}

/// What [`read_committed`] read: whole transactions, checked.
#[derive(Debug)]
pub struct ReadFrames {
    header: WalHeader,
    continues: bool,
    start: WalPosition,
    end: WalPosition,
    frames: Frames,
}

impl ReadFrames {
    pub fn header(&self) -> &WalHeader {
        &self.header
    }

    /// Whether the frames follow the position read from. If not, they start
    /// at the first frame of a WAL that replaced the one the position was
    /// in, and whether anything was lost in between is for the caller to
    /// judge.
    pub fn continues(&self) -> bool {
        self.continues
    }

    /// Where the frames start: the position read from, or the start of a new
    /// WAL.
    pub fn start(&self) -> WalPosition {
        self.start
    }

    /// Where the next read goes on from: after the last commit read (the
    /// start, if there was none).
    pub fn end(&self) -> WalPosition {
        self.end
    }

    pub fn frames(&self) -> &Frames {
        &self.frames
    }
}

/// Reads the committed frames of the WAL at `wal_path` that follow `from`,
/// up to the last commit frame at or before `up_to_frame` (the frame count
/// SQLite's WAL hook reported after the last commit). Without `from`, or if
/// the WAL is no longer the one `from` was in (other salts), reads from this
/// WAL's first frame. A missing WAL, one shorter than `up_to_frame` frames,
/// or a frame that fails its checks is [`Error::DataLoss`]: what was
/// shipped no longer leads to what is in the file.
pub fn read_committed(
    wal_path: &Path,
    from: Option<WalPosition>,
    up_to_frame: u32,
) -> Result<ReadFrames> {
    let wal = WalFile::open(wal_path)?;
    if wal.len < wal.header.end_of(up_to_frame) {
        return Err(wal.damaged(format_args!(
            "it is {} bytes long, too short for the {up_to_frame} frames committed",
            wal.len
        )));
    }
    let (start, continues) = wal.start(from, up_to_frame)?;
    let last_commit = wal.last_commit(start.frame, up_to_frame)?;
    let (frames, end) = wal.read_frames(start, last_commit)?;
    Ok(ReadFrames {
        header: wal.header,
        continues,
        start,
        end,
        frames,
    })
}

/// An open WAL whose header was read and checked.
struct WalFile<'p> {
    path: &'p Path,
    file: File,
    len: u64,
    header: WalHeader,
}

impl<'p> WalFile<'p> {
    fn open(path: &'p Path) -> Result<Self> {
        let file = match File::open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(damaged_wal(path, "it does not exist"));
            }
            opened => opened.context(|| format!("opening the WAL {}", path.display()))?,
        };
        let len = file
            .metadata()
            .context(|| format!("reading the size of the WAL {}", path.display()))?
            .len();
        let mut bytes = [0; WAL_HEADER_BYTES];
        read_exact_at(&file, path, &mut bytes, 0)?;
        let header = read_header(&bytes).map_err(|e| damaged_wal(path, e))?;
        Ok(WalFile {
            path,
            file,
            len,
            header,
        })
    }

    fn damaged(&self, what: impl fmt::Display) -> Error {
        damaged_wal(self.path, what)
    }

    /// Where reading starts, and whether that continues `from`.
    fn start(&self, from: Option<WalPosition>, up_to_frame: u32) -> Result<(WalPosition, bool)> {
        match from {
            Some(from) if from.salts == self.header.salts => {
                if from.frame > up_to_frame {
                    return Err(self.damaged(format_args!(
                        "{up_to_frame} frames are committed, fewer than the {} already read",
                        from.frame
                    )));
                }
                self.check_position(from)?;
                Ok((from, true))
            }
            _ => Ok((self.header.start(), false)),
        }
    }

    /// Salts are only 64 bits and the caller's position may be stale: the
    /// frame it names must still end with the checksum it recorded, or the
    /// frames after it do not continue what was shipped.
    fn check_position(&self, at: WalPosition) -> Result<()> {
        let checksum = if at.frame == 0 {
            self.header.checksum
        } else {
            let header = self.frame_header(at.frame)?;
            [be32(&header, 16), be32(&header, 20)]
        };
        if checksum != at.checksum {
            return Err(self.damaged(format_args!(
                "frame {} no longer ends with the checksum read before",
                at.frame
            )));
        }
        Ok(())
    }

    fn frame_header(&self, frame: u32) -> Result<[u8; FRAME_HEADER_BYTES]> {
        let mut header = [0; FRAME_HEADER_BYTES];
        read_exact_at(
            &self.file,
            self.path,
            &mut header,
            self.header.end_of(frame - 1),
        )?;
        Ok(header)
    }

    /// The last commit frame after `after` and at or before `up_to_frame`,
    /// or `after` if none. The search goes backwards because the hook's
    /// count normally is a commit frame: one header read finds it.
    fn last_commit(&self, after: u32, up_to_frame: u32) -> Result<u32> {
        for frame in (after + 1..=up_to_frame).rev() {
            if be32(&self.frame_header(frame)?, 4) != 0 {
                return Ok(frame);
            }
        }
        Ok(after)
    }

    /// Reads the frames after `start` up to `last`, checking each, and
    /// compacts them in place into records.
    fn read_frames(&self, start: WalPosition, last: u32) -> Result<(Frames, WalPosition)> {
        let count = (last - start.frame) as usize;
        let frame_bytes = self.header.frame_bytes();
        let record_bytes = record_bytes(self.header.page_size);
        let mut buffer = vec![0; count * frame_bytes];
        read_exact_at(
            &self.file,
            self.path,
            &mut buffer,
            self.header.end_of(start.frame),
        )?;
        let mut checksum = start.checksum;
        for (index, frame) in (0..count).zip(start.frame + 1..) {
            let (from, to) = (index * frame_bytes, index * record_bytes);
            let salts = [be32(&buffer, from + 8), be32(&buffer, from + 12)];
            let stored = [be32(&buffer, from + 16), be32(&buffer, from + 20)];
            // The record never reaches past the start of the frame after:
            // each one is 16 bytes shorter than its frame.
            buffer.copy_within(from..from + RECORD_HEADER_BYTES, to);
            buffer.copy_within(from + FRAME_HEADER_BYTES..from + frame_bytes, to + 8);
            let record = &buffer[to..to + record_bytes];
            checksum = wal_checksum(self.header.big_endian_checksums, checksum, record);
            if salts != self.header.salts || checksum != stored {
                return Err(self.damaged(format_args!(
                    "frame {frame} does not follow the frames before it"
                )));
            }
            if be32(record, 0) == 0 {
                return Err(self.damaged(format_args!("frame {frame} holds page 0")));
            }
        }
        buffer.truncate(count * record_bytes);
        let end = WalPosition {
            salts: self.header.salts,
            frame: last,
            checksum,
        };
        let frames = Frames {
            page_size: self.header.page_size,
            records: buffer,
        };
        Ok((frames, end))
    }
}

fn read_exact_at(file: &File, path: &Path, buffer: &mut [u8], offset: u64) -> Result<()> {
    match file.read_exact_at(buffer, offset) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(damaged_wal(
            path,
            format_args!("it ends before byte {}", offset + buffer.len() as u64),
        )),
        read => read.context(|| format!("reading the WAL {}", path.display())),
    }
}

fn damaged_wal(path: &Path, what: impl fmt::Display) -> Error {
    Error::DataLoss(format!(
        "the WAL {} does not hold what was committed: {what}",
        path.display()
    ))
}

/// SQLite's WAL checksum of `bytes` (a multiple of 8 bytes long), chained
/// from `seed`: two running sums over pairs of 32-bit words, each sum
/// feeding the other, so that reordered words change it.
fn wal_checksum(big_endian: bool, seed: [u32; 2], bytes: &[u8]) -> [u32; 2] {
    let word: fn([u8; 4]) -> u32 = if big_endian {
        u32::from_be_bytes
    } else {
        u32::from_le_bytes
    };
    let (words, _) = bytes.as_chunks::<4>();
    let (pairs, _) = words.as_chunks::<2>();
    let [mut s0, mut s1] = seed;
    for [first, second] in pairs {
        s0 = s0.wrapping_add(word(*first)).wrapping_add(s1);
        s1 = s1.wrapping_add(word(*second)).wrapping_add(s0);
    }
    [s0, s1]
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

fn is_page_size(page_size: u32) -> bool {
    page_size.is_power_of_two() && (512..=65536).contains(&page_size)
}

fn record_bytes(page_size: u32) -> usize {
    RECORD_HEADER_BYTES + page_size as usize
}

/// One commit of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// How many of the segment's frames come up to and including the
    /// commit's commit frame.
    pub frames: u32,
    /// When it committed, in microseconds since the Unix epoch.
    pub time_micros: i64,
}

/// A segment's description of itself, stored as JSON before its frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    pub page_size: u32,
    /// The salts of the WAL the frames come from.
    pub salts: [u32; 2],
    /// The WAL frame numbers of the first and last frames.
    pub first_frame: u32,
    pub last_frame: u32,
    /// The cumulative checksum after the last frame: with the salts and
    /// `last_frame`, where the next read of the WAL goes on from, so that a
    /// replicator starting over can continue from its last segment.
    pub end_checksum: [u32; 2],
    /// In commit order; the last one ends the segment.
    pub commits: Vec<Commit>,
}

impl SegmentHeader {
    /// What a decoded header must hold before its sizes are believed;
    /// `budget`: the bytes its frames may take.
    fn check(&self, budget: u64) -> std::result::Result<(), String> {
        if !is_page_size(self.page_size) {
            return Err(format!(
                "page size {} is not a power of two from 512 to 65536",
                self.page_size
            ));
        }
        if self.first_frame == 0 || self.last_frame < self.first_frame {
            return Err(format!(
                "frames {} to {} are not WAL frames",
                self.first_frame, self.last_frame
            ));
        }
        if self.records_bytes() > budget {
            return Err(format!(
                "its {} frames would take more than the {MAX_SEGMENT_BYTES} bytes a segment may",
                self.frame_count()
            ));
        }
        let mut previous = 0;
        for commit in &self.commits {
            if commit.frames <= previous {
                return Err("its commits do not end at increasing frames".into());
            }
            previous = commit.frames;
        }
        if previous != self.frame_count() {
            return Err(format!(
                "its commits end at frame {previous} of its {}",
                self.frame_count()
            ));
        }
        Ok(())
    }

    fn frame_count(&self) -> u32 {
        self.last_frame - self.first_frame + 1
    }

    fn records_bytes(&self) -> u64 {
        u64::from(self.frame_count()) * record_bytes(self.page_size) as u64
    }
}

/// The frames of one read of a WAL, with their commit times: the unit
/// shipped to object storage as one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    header: SegmentHeader,
    frames: Frames,
}

impl Segment {
    /// The segment of `read`, or `None` if it read no commit. Each commit
    /// takes its time from `commit_times`: pairs of the WAL's frame count
    /// after a commit (as the WAL hook reported it, for this WAL) and when
    /// that commit was made. A commit the hook did not report (one made
    /// while no hook was set) takes the time of the next known commit, which
    /// it preceded; failing that the last known time, failing that
    /// `fallback_micros`.
    pub fn new(
        read: ReadFrames,
        commit_times: &[(u32, i64)],
        fallback_micros: i64,
    ) -> Option<Self> {
        if read.frames.is_empty() {
            return None;
        }
        let mut known = commit_times.to_vec();
        known.sort_by_key(|&(frames, _)| frames);
        let commits = read
            .frames
            .iter()
            .zip(1u32..)
            .filter(|(frame, _)| frame.commit_size != 0)
            .map(|(_, frames)| Commit {
                frames,
                time_micros: commit_time(&known, read.start.frame + frames, fallback_micros),
            })
            .collect();
        let header = SegmentHeader {
            page_size: read.header.page_size,
            salts: read.end.salts,
            first_frame: read.start.frame + 1,
            last_frame: read.end.frame,
            end_checksum: read.end.checksum,
            commits,
        };
        Some(Segment {
            header,
            frames: read.frames,
        })
    }

    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    pub fn frames(&self) -> &Frames {
        &self.frames
    }

    /// The position in the WAL after the segment's last frame.
    pub fn end_position(&self) -> WalPosition {
        WalPosition {
            salts: self.header.salts,
            frame: self.header.last_frame,
            checksum: self.header.end_checksum,
        }
    }

    /// The magic and format version, then, compressed: the header's length
    /// (4 bytes, big-endian), the header as JSON, and the frames' records.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let header =
            serde_json::to_vec(&self.header).context(|| "writing a segment's header".into())?;
        let size = (header.len() + self.frames.records.len()) as u64;
        if size > MAX_SEGMENT_BYTES {
            return Err(Error::internal(
                "encoding a segment",
                format!("its {size} bytes are more than the {MAX_SEGMENT_BYTES} a restore reads"),
            ));
        }
        compress(&header, &self.frames.records).context(|| "compressing a segment".into())
    }

    /// Reads a segment [`Segment::encode`] made, from bytes that may be
    /// anything. zstd's content checksum catches damage to the compressed
    /// data; anything else wrong is [`Error::DataLoss`] too, but for a
    /// format version this build does not know ([`Error::FailedPrecondition`]).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let body = bytes
            .strip_prefix(SEGMENT_MAGIC.as_slice())
            .ok_or_else(|| damaged_segment("it does not start with the segment magic"))?;
        let (&version, compressed) = body
            .split_first()
            .ok_or_else(|| damaged_segment("it ends after its magic"))?;
        if version != SEGMENT_VERSION {
            return Err(Error::FailedPrecondition(format!(
                "segment format version {version} is not {SEGMENT_VERSION}, the one this build reads"
            )));
        }
        let mut reader = zstd::stream::read::Decoder::with_buffer(compressed)
            .context(|| "starting to decompress a segment".into())?;
        let header = read_segment_header(&mut reader)?;
        let records = read_exactly(&mut reader, header.records_bytes())?;
        let mut end = [0];
        if reader.read(&mut end).map_err(damaged_segment)? != 0 {
            return Err(damaged_segment("it holds more frames than its header says"));
        }
        let frames = Frames {
            page_size: header.page_size,
            records,
        };
        check_frames(&header, &frames).map_err(damaged_segment)?;
        Ok(Segment { header, frames })
    }
}

/// The time of the commit after which the WAL held `wal_frames` frames,
/// from `known` sorted by frame count.
fn commit_time(known: &[(u32, i64)], wal_frames: u32, fallback_micros: i64) -> i64 {
    let at_or_after = known.partition_point(|&(frames, _)| frames < wal_frames);
    known
        .get(at_or_after)
        .or(known.last())
        .map_or(fallback_micros, |&(_, time)| time)
}

fn compress(header: &[u8], records: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoded = SEGMENT_MAGIC.to_vec();
    encoded.push(SEGMENT_VERSION);
    let mut encoder = zstd::stream::write::Encoder::new(encoded, SEGMENT_ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    let header_len = u32::try_from(header.len()).map_err(io::Error::other)?;
    encoder.write_all(&header_len.to_be_bytes())?;
    encoder.write_all(header)?;
    encoder.write_all(records)?;
    encoder.finish()
}

fn read_segment_header(reader: &mut impl Read) -> Result<SegmentHeader> {
    let mut len = [0; 4];
    reader.read_exact(&mut len).map_err(damaged_segment)?;
    let len = u32::from_be_bytes(len);
    if u64::from(len) > MAX_SEGMENT_BYTES {
        return Err(damaged_segment(format_args!(
            "its header claims {len} bytes"
        )));
    }
    let json = read_exactly(reader, u64::from(len))?;
    let header: SegmentHeader = serde_json::from_slice(&json).map_err(damaged_segment)?;
    header
        .check(MAX_SEGMENT_BYTES - u64::from(len))
        .map_err(damaged_segment)?;
    Ok(header)
}

/// Reads `len` bytes, growing the buffer only as data comes: a header that
/// lies about sizes costs no more memory than the data there is.
fn read_exactly(reader: &mut impl Read, len: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .by_ref()
        .take(len)
        .read_to_end(&mut bytes)
        .map_err(damaged_segment)?;
    if bytes.len() as u64 != len {
        return Err(damaged_segment(format_args!(
            "it ends {} bytes short",
            len - bytes.len() as u64
        )));
    }
    Ok(bytes)
}

/// The frames must carry what the header says of them: a real page number
/// each, and a database size exactly at the commit frames.
fn check_frames(header: &SegmentHeader, frames: &Frames) -> std::result::Result<(), String> {
    let mut commits = header.commits.iter().map(|commit| commit.frames).peekable();
    for (frame, number) in frames.iter().zip(1u32..) {
        if frame.page_number == 0 {
            return Err(format!("its frame {number} holds page 0"));
        }
        let ends_commit = commits.next_if_eq(&number).is_some();
        if ends_commit != (frame.commit_size != 0) {
            return Err(format!(
                "its frame {number} disagrees with its header on whether it ends a commit"
            ));
        }
    }
    Ok(())
}

fn damaged_segment(what: impl fmt::Display) -> Error {
    Error::DataLoss(format!("damaged segment: {what}"))
}

/// A database being rebuilt from a snapshot and the segments after it.
pub struct Rebuild {
    file: File,
    page_size: u32,
    /// The database size in pages after the last commit applied.
    pages: Option<u32>,
    /// Where the last segment applied ended, which the next must follow.
    end: Option<WalPosition>,
    stopped: bool,
}

/// What [`Rebuild::apply`] did with one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub commits: usize,
    /// A commit was later than the time to restore to: the rebuild is
    /// complete, and no further segment applies.
    pub stopped: bool,
}

impl Rebuild {
    /// `file`: a copy of a snapshot, open for reading and writing, whose
    /// pages are `page_size` bytes.
    pub fn new(file: File, page_size: u32) -> Self {
        Rebuild {
            file,
            page_size,
            pages: None,
            end: None,
            stopped: false,
        }
    }

    /// Writes the pages of the segment's commits made at or before
    /// `until_micros` (all, without it). A segment must follow the one
    /// applied before: the next frame of the same WAL, or the first of a
    /// new one; otherwise one is missing, and [`Error::DataLoss`] says so.
    pub fn apply(&mut self, segment: &Segment, until_micros: Option<i64>) -> Result<Applied> {
        if self.stopped {
            return Ok(Applied {
                commits: 0,
                stopped: true,
            });
        }
        self.check_follows(&segment.header)?;
        let commits = &segment.header.commits;
        let applied = commits
            .iter()
            .take_while(|commit| until_micros.is_none_or(|until| commit.time_micros <= until))
            .count();
        if let Some(last) = commits[..applied].last() {
            self.write(segment.frames.iter().take(last.frames as usize))?;
        }
        self.stopped = applied < commits.len();
        self.end = Some(segment.end_position());
        Ok(Applied {
            commits: applied,
            stopped: self.stopped,
        })
    }

    fn check_follows(&self, header: &SegmentHeader) -> Result<()> {
        if header.page_size != self.page_size {
            return Err(Error::DataLoss(format!(
                "a segment of {}-byte pages does not apply to a database of {}-byte pages",
                header.page_size, self.page_size
            )));
        }
        let Some(end) = self.end else {
            return Ok(());
        };
        let follows = if header.salts == end.salts {
            header.first_frame - 1 == end.frame
        } else {
            header.first_frame == 1
        };
        if !follows {
            return Err(Error::DataLoss(format!(
                "a segment starting at WAL frame {} does not follow the one before, which \
                 ended at frame {}: a segment is missing",
                header.first_frame, end.frame
            )));
        }
        Ok(())
    }

    fn write<'a>(&mut self, frames: impl Iterator<Item = Frame<'a>>) -> Result<()> {
        for frame in frames {
            let offset = u64::from(frame.page_number - 1) * u64::from(self.page_size);
            self.file
                .write_all_at(frame.page, offset)
                .context(|| format!("writing page {} of a rebuilt database", frame.page_number))?;
            if frame.commit_size != 0 {
                self.pages = Some(frame.commit_size);
            }
        }
        Ok(())
    }

    /// Cuts the file to the size of the last commit applied (pages past it
    /// were freed, or written by frames of a later commit left out) and makes
    /// it durable.
    pub fn finish(self) -> Result<()> {
        if let Some(pages) = self.pages {
            self.file
                .set_len(u64::from(pages) * u64::from(self.page_size))
                .context(|| "cutting a rebuilt database to its last commit".into())?;
        }
        self.file
            .sync_all()
            .context(|| "syncing a rebuilt database".into())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::ffi::c_int;
    use std::path::PathBuf;

    use proptest::prelude::*;
    use rusqlite::Connection;
    use rusqlite::hooks::Wal;
    use serde_json::json;
    use tempfile::TempDir;

    use super::*;

    thread_local! {
        /// The WAL's frame count after the last commit on this thread, as
        /// SQLite's WAL hook reports it: what the replicator passes as
        /// `up_to_frame`. The hook takes a plain function, hence a global;
        /// per thread, as each test runs on its own.
        static WAL_FRAMES: Cell<u32> = const { Cell::new(0) };
    }

    fn record_frames(_: &Wal, frames: c_int) -> rusqlite::Result<()> {
        WAL_FRAMES.set(u32::try_from(frames).expect("a frame count is not negative"));
        Ok(())
    }

    /// A database opened as tenantry opens a tenant's, with a snapshot taken
    /// once its table was made. Commit number `n` (from 1) is made at time
    /// `n * 1000`.
    struct Tenant {
        dir: TempDir,
        conn: Connection,
        page_size: u32,
        commit_times: Vec<(u32, i64)>,
    }

    impl Tenant {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let conn = Connection::open(dir.path().join("tenant.db")).unwrap();
            conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
                .unwrap();
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            // The pragma replaces any WAL hook with SQLite's own (or none),
            // so ours goes after it.
            conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
            conn.wal_hook(Some(record_frames));
            conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
                .unwrap();
            let page_size = conn
                .pragma_query_value(None, "page_size", |row| row.get(0))
                .unwrap();
            let tenant = Tenant {
                dir,
                conn,
                page_size,
                commit_times: Vec::new(),
            };
            tenant.checkpoint("TRUNCATE");
            std::fs::copy(tenant.path("tenant.db"), tenant.path("snapshot.db")).unwrap();
            tenant
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn wal(&self) -> PathBuf {
            self.path("tenant.db-wal")
        }

        /// Runs `sql` and returns the WAL's frame count after its (last)
        /// commit.
        fn commit(&mut self, sql: &str) -> u32 {
            self.conn.execute_batch(sql).unwrap();
            let frames = WAL_FRAMES.get();
            let time = 1000 * (self.commit_times.len() as i64 + 1);
            self.commit_times.push((frames, time));
            frames
        }

        fn checkpoint(&self, mode: &str) {
            let busy: i64 = self
                .conn
                .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
                    row.get(0)
                })
                .unwrap();
            assert_eq!(busy, 0);
        }

        fn segment(&self, from: Option<WalPosition>, up_to_frame: u32) -> Segment {
            let read = read_committed(&self.wal(), from, up_to_frame).unwrap();
            Segment::new(read, &self.commit_times, 0).unwrap()
        }

        /// Rebuilds the snapshot with `segments` (through their encoding)
        /// into a new file `name`, and opens it once checked.
        fn restore(
            &self,
            name: &str,
            segments: &[&Segment],
            until_micros: Option<i64>,
        ) -> (Connection, Vec<Applied>) {
            let path = self.path(name);
            std::fs::copy(self.path("snapshot.db"), &path).unwrap();
            let file = File::options().read(true).write(true).open(&path).unwrap();
            let mut rebuild = Rebuild::new(file, self.page_size);
            let mut applied = Vec::new();
            for segment in segments {
                let decoded = Segment::decode(&segment.encode().unwrap()).unwrap();
                assert_eq!(&decoded, *segment);
                applied.push(rebuild.apply(&decoded, until_micros).unwrap());
                if applied.last().unwrap().stopped {
                    break;
                }
            }
            rebuild.finish().unwrap();
            let conn = Connection::open(&path).unwrap();
            let check: String = conn
                .query_row("PRAGMA integrity_check", [], |row| row.get(0))
                .unwrap();
            assert_eq!(check, "ok");
            (conn, applied)
        }
    }

    fn rows(conn: &Connection) -> Vec<(i64, Vec<u8>)> {
        let mut statement = conn.prepare("SELECT id, body FROM t ORDER BY id").unwrap();
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn ids(conn: &Connection) -> Vec<i64> {
        rows(conn).into_iter().map(|(id, _)| id).collect()
    }

    fn page_count(conn: &Connection) -> u32 {
        conn.pragma_query_value(None, "page_count", |row| row.get(0))
            .unwrap()
    }

    fn times(segment: &Segment) -> Vec<i64> {
        segment
            .header()
            .commits
            .iter()
            .map(|commit| commit.time_micros)
            .collect()
    }

    const INSERT_THREE: &str = "BEGIN;
        INSERT INTO t(body) VALUES (randomblob(5000)), (randomblob(5000)), (randomblob(5000));
        COMMIT;";

    #[test]
    fn segments_read_in_two_parts_rebuild_the_database_from_its_snapshot() {
        let mut tenant = Tenant::new();
        tenant.commit(INSERT_THREE);
        tenant.commit("UPDATE t SET body = randomblob(100) WHERE id = 2");
        let up_to = tenant.commit("INSERT INTO t(body) VALUES (randomblob(5000))");
        let read = read_committed(&tenant.wal(), None, up_to).unwrap();
        assert!(!read.continues());
        assert_eq!(read.start().frame, 0);
        assert_eq!(read.end().frame, up_to);
        assert_eq!(read.frames().len(), up_to as usize);
        let first = Segment::new(read, &tenant.commit_times, 0).unwrap();
        assert_eq!(times(&first), [1000, 2000, 3000]);

        tenant.commit("DELETE FROM t WHERE id = 1");
        tenant.commit(
            "INSERT INTO t(body) SELECT randomblob(700) FROM
                (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
                 SELECT i FROM n)",
        );
        // Two commits, the second shrinking the file; the hook's count is
        // kept for the second only.
        let up_to = tenant.commit("DELETE FROM t WHERE id > 20; VACUUM");
        let read = read_committed(&tenant.wal(), Some(first.end_position()), up_to).unwrap();
        assert!(read.continues());
        assert_eq!(read.start(), first.end_position());
        let second = Segment::new(read, &tenant.commit_times, 0).unwrap();
        assert_eq!(second.header().first_frame, first.header().last_frame + 1);
        assert_eq!(times(&second), [4000, 5000, 6000, 6000]);

        let (restored, applied) = tenant.restore("restored.db", &[&first, &second], None);
        assert_eq!(
            applied,
            [
                Applied {
                    commits: 3,
                    stopped: false
                },
                Applied {
                    commits: 4,
                    stopped: false
                }
            ]
        );
        assert_eq!(rows(&restored), rows(&tenant.conn));
        let pages = page_count(&tenant.conn);
        assert_eq!(page_count(&restored), pages);
        // The VACUUM shrank the database, and the file was cut to it.
        let largest = second.frames().iter().map(|f| f.commit_size).max();
        assert!(pages < largest.unwrap());
        let len = std::fs::metadata(tenant.path("restored.db")).unwrap().len();
        assert_eq!(len, u64::from(pages) * u64::from(tenant.page_size));
    }

    #[test]
    fn a_restore_to_a_point_in_time_keeps_the_commits_made_until_then() {
        let mut tenant = Tenant::new();
        tenant.commit("INSERT INTO t(id, body) VALUES (1, x'01')");
        tenant.commit(INSERT_THREE);
        let up_to = tenant.commit("INSERT INTO t(id, body) VALUES (10, randomblob(9000))");
        let segment = tenant.segment(None, up_to);

        let (restored, applied) = tenant.restore("2500.db", &[&segment], Some(2500));
        assert_eq!(ids(&restored), [1, 2, 3, 4]);
        assert_eq!(
            applied,
            [Applied {
                commits: 2,
                stopped: true
            }]
        );

        let (restored, applied) = tenant.restore("500.db", &[&segment], Some(500));
        assert_eq!(ids(&restored), [] as [i64; 0]);
        assert_eq!(
            applied,
            [Applied {
                commits: 0,
                stopped: true
            }]
        );

        let (restored, _) = tenant.restore("3000.db", &[&segment], Some(3000));
        assert_eq!(rows(&restored), rows(&tenant.conn));
    }

    #[test]
    fn a_rebuild_stopped_at_its_time_applies_no_later_segment() {
        let mut tenant = Tenant::new();
        let first = tenant.commit("INSERT INTO t(id, body) VALUES (1, x'01')");
        let first = tenant.segment(None, first);
        let second = tenant.commit("INSERT INTO t(id, body) VALUES (2, x'02')");
        let second = tenant.segment(Some(first.end_position()), second);
        let file = File::options()
            .read(true)
            .write(true)
            .open(tenant.path("snapshot.db"))
            .unwrap();
        let mut rebuild = Rebuild::new(file, tenant.page_size);
        let stopped = Applied {
            commits: 0,
            stopped: true,
        };
        assert_eq!(rebuild.apply(&first, Some(999)).unwrap(), stopped);
        assert_eq!(rebuild.apply(&second, None).unwrap(), stopped);
    }

    #[test]
    fn a_wal_restarted_after_a_checkpoint_does_not_continue_the_old_position() {
        let mut tenant = Tenant::new();
        let up_to = tenant.commit(INSERT_THREE);
        let old = tenant.segment(None, up_to);
        tenant.checkpoint("RESTART");
        let up_to = tenant.commit("INSERT INTO t(id, body) VALUES (100, x'ff')");
        assert!(up_to < old.header().last_frame, "the WAL restarted");

        let read = read_committed(&tenant.wal(), Some(old.end_position()), up_to).unwrap();
        assert!(!read.continues());
        assert_eq!(read.start().frame, 0);
        assert_ne!(read.header().salts, old.header().salts);
        assert_eq!(read.end().frame, up_to);
        let new = Segment::new(read, &tenant.commit_times[1..], 0).unwrap();
        assert_eq!(new.header().first_frame, 1);
        assert_eq!(times(&new), [2000]);

        let (restored, _) = tenant.restore("restored.db", &[&old, &new], None);
        assert_eq!(rows(&restored), rows(&tenant.conn));
    }

    #[test]
    fn a_rebuild_refuses_a_segment_that_does_not_follow_the_last_one() {
        let mut tenant = Tenant::new();
        let mut segments = Vec::new();
        let mut from = None;
        for id in 1..=3 {
            let up_to = tenant.commit(&format!("INSERT INTO t(id, body) VALUES ({id}, x'00')"));
            let segment = tenant.segment(from, up_to);
            from = Some(segment.end_position());
            segments.push(segment);
        }
        let open = || {
            File::options()
                .read(true)
                .write(true)
                .open(tenant.path("snapshot.db"))
                .unwrap()
        };
        let mut rebuild = Rebuild::new(open(), tenant.page_size);
        rebuild.apply(&segments[0], None).unwrap();
        let error = rebuild.apply(&segments[2], None).unwrap_err();
        assert!(matches!(error, Error::DataLoss(_)), "{error}");

        let mut rebuild = Rebuild::new(open(), tenant.page_size * 2);
        let error = rebuild.apply(&segments[0], None).unwrap_err();
        assert!(matches!(error, Error::DataLoss(_)), "{error}");
    }

    #[test]
    fn commits_the_hook_missed_take_the_next_known_time_or_the_last_or_the_fallback() {
        let mut tenant = Tenant::new();
        tenant.commit("INSERT INTO t(body) VALUES (x'01')");
        let middle = tenant.commit("INSERT INTO t(body) VALUES (x'02')");
        let up_to = tenant.commit("INSERT INTO t(body) VALUES (x'03')");
        let segment = |known: &[(u32, i64)]| {
            let read = read_committed(&tenant.wal(), None, up_to).unwrap();
            Segment::new(read, known, 99).unwrap()
        };
        assert_eq!(times(&segment(&[(middle, 7)])), [7, 7, 7]);
        assert_eq!(times(&segment(&[])), [99, 99, 99]);
        assert_eq!(times(&segment(&tenant.commit_times)), [1000, 2000, 3000]);
    }

    #[test]
    fn a_read_up_to_the_middle_of_a_transaction_stops_at_the_commit_before() {
        let mut tenant = Tenant::new();
        let committed = tenant.commit("INSERT INTO t(id, body) VALUES (1, x'01')");
        let up_to = tenant.commit(INSERT_THREE);
        assert!(
            up_to - committed >= 2,
            "the transaction spans several frames"
        );

        let read = read_committed(&tenant.wal(), None, up_to - 1).unwrap();
        assert_eq!(read.end().frame, committed);
        assert_eq!(read.frames().len(), committed as usize);
        let last = read.frames().iter().last().unwrap();
        assert_ne!(last.commit_size, 0);

        let nothing = read_committed(&tenant.wal(), Some(read.end()), up_to - 1).unwrap();
        assert!(nothing.continues());
        assert!(nothing.frames().is_empty());
        assert_eq!(nothing.end(), read.end());
        let empty = Segment::new(nothing, &tenant.commit_times, 0);
        assert!(empty.is_none());

        let rest = read_committed(&tenant.wal(), Some(read.end()), up_to).unwrap();
        assert_eq!(rest.frames().len(), (up_to - committed) as usize);
        assert_eq!(rest.end().frame, up_to);
    }

    #[test]
    fn a_damaged_or_missing_wal_is_data_loss() {
        let mut tenant = Tenant::new();
        let first = tenant.commit("INSERT INTO t(id, body) VALUES (1, x'01')");
        let up_to = tenant.commit("INSERT INTO t(id, body) VALUES (2, x'02')");
        let read = |from, up_to| read_committed(&tenant.wal(), from, up_to);
        let is_data_loss = |result: Result<ReadFrames>| {
            let error = result.unwrap_err();
            assert!(matches!(error, Error::DataLoss(_)), "{error}");
        };
        let position = read(None, first).unwrap().end();

        is_data_loss(read(None, up_to + 1));
        is_data_loss(read_committed(&tenant.path("nowhere-wal"), None, up_to));
        let stale = WalPosition {
            checksum: [position.checksum[0] ^ 1, position.checksum[1]],
            ..position
        };
        is_data_loss(read(Some(stale), up_to));
        let beyond = WalPosition {
            frame: up_to + 1,
            ..position
        };
        is_data_loss(read(Some(beyond), up_to));

        let frame_bytes = tenant.page_size as u64 + 24;
        let wal = File::options()
            .read(true)
            .write(true)
            .open(tenant.wal())
            .unwrap();
        let flip = |offset: u64| {
            let mut byte = [0];
            wal.read_exact_at(&mut byte, offset).unwrap();
            wal.write_all_at(&[byte[0] ^ 0x10], offset).unwrap();
        };
        // A byte of the second frame's page: the first still reads.
        flip(32 + frame_bytes + 24 + 100);
        is_data_loss(read(Some(position), up_to));
        assert_eq!(read(None, first).unwrap().end(), position);
        flip(20);
        is_data_loss(read(None, first));
    }

    #[test]
    fn read_header_checks_every_field() {
        let mut tenant = Tenant::new();
        let up_to = tenant.commit("INSERT INTO t(id, body) VALUES (1, x'01')");
        let wal = std::fs::read(tenant.wal()).unwrap();
        let header = read_header(&wal).unwrap();
        assert_eq!(header.page_size, tenant.page_size);
        let read = read_committed(&tenant.wal(), None, up_to).unwrap();
        assert_eq!(*read.header(), header);

        assert!(read_header(&wal[..31]).is_err());
        for offset in [0, 4, 8, 16, 24] {
            let mut damaged = wal[..32].to_vec();
            damaged[offset + 2] ^= 1;
            assert!(read_header(&damaged).is_err(), "a change at byte {offset}");
        }
    }

    fn record(page_number: u32, commit_size: u32, page_size: usize) -> Vec<u8> {
        let mut record = page_number.to_be_bytes().to_vec();
        record.extend(commit_size.to_be_bytes());
        record.resize(RECORD_HEADER_BYTES + page_size, page_number as u8);
        record
    }

    /// Two frames of 512 bytes, one commit.
    fn valid_header() -> serde_json::Value {
        json!({
            "page_size": 512,
            "salts": [1, 2],
            "first_frame": 5,
            "last_frame": 6,
            "end_checksum": [3, 4],
            "commits": [{"frames": 2, "time_micros": 10}],
        })
    }

    fn valid_records() -> Vec<u8> {
        [record(1, 0, 512), record(2, 2, 512)].concat()
    }

    fn encoded(header: &serde_json::Value, records: &[u8]) -> Vec<u8> {
        compress(&serde_json::to_vec(header).unwrap(), records).unwrap()
    }

    fn small_segment() -> Segment {
        Segment::decode(&encoded(&valid_header(), &valid_records())).unwrap()
    }

    #[test]
    fn a_segment_decodes_to_what_was_encoded() {
        let segment = small_segment();
        assert_eq!(segment.frames().len(), 2);
        let pages: Vec<_> = segment.frames().iter().map(|f| f.page_number).collect();
        assert_eq!(pages, [1, 2]);
        assert_eq!(
            Segment::decode(&segment.encode().unwrap()).unwrap(),
            segment
        );
    }

    #[test]
    fn decoding_refuses_garbage_and_truncated_segments() {
        for garbage in [
            &b""[..],
            b"garbage",
            b"TNTRYSEG",
            b"TNTRYSEG\x01",
            b"TNTRYSEG\x01abc",
        ] {
            assert!(Segment::decode(garbage).is_err());
        }
        let mut newer = small_segment().encode().unwrap();
        newer[SEGMENT_MAGIC.len()] += 1;
        let error = Segment::decode(&newer).unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)), "{error}");

        let encoding = small_segment().encode().unwrap();
        for len in 0..encoding.len() {
            assert!(Segment::decode(&encoding[..len]).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn decoding_refuses_a_header_that_disagrees_with_the_frames() {
        let valid = valid_records();
        let lies: Vec<(serde_json::Value, Vec<u8>)> = vec![
            (json!({"page_size": 1000}), valid.clone()),
            (json!({"page_size": 256}), valid.clone()),
            (json!({"last_frame": 7}), valid.clone()),
            (json!({"last_frame": 5}), valid.clone()),
            (json!({"first_frame": 0, "last_frame": 1}), valid.clone()),
            (json!({"last_frame": 4}), valid.clone()),
            (json!({"last_frame": u32::MAX}), valid.clone()),
            (json!({"commits": []}), valid.clone()),
            (
                json!({"commits": [{"frames": 3, "time_micros": 1}]}),
                valid.clone(),
            ),
            (
                json!({"commits": [{"frames": 2, "time_micros": 1}, {"frames": 1, "time_micros": 2}]}),
                valid.clone(),
            ),
            (
                json!({"commits": [{"frames": 1, "time_micros": 1}, {"frames": 2, "time_micros": 2}]}),
                valid.clone(),
            ),
            (json!({}), [record(0, 0, 512), record(2, 2, 512)].concat()),
            (json!({}), [record(1, 0, 512), record(2, 0, 512)].concat()),
            (json!({}), [record(1, 0, 512)].concat()),
            (json!({}), [valid.as_slice(), b"x"].concat()),
            (json!({"salts": "salty"}), valid.clone()),
        ];
        for (changes, records) in lies {
            let mut header = valid_header();
            for (key, value) in changes.as_object().unwrap() {
                header[key] = value.clone();
            }
            let result = Segment::decode(&encoded(&header, &records));
            assert!(
                matches!(result, Err(Error::DataLoss(_))),
                "{header}: {result:?}"
            );
        }
    }

    #[test]
    fn decoding_refuses_a_header_length_over_its_bound() {
        let mut encoding = SEGMENT_MAGIC.to_vec();
        encoding.push(SEGMENT_VERSION);
        let body = [u32::MAX.to_be_bytes().as_slice(), b"{}"].concat();
        encoding.extend(zstd::encode_all(body.as_slice(), 3).unwrap());
        assert!(matches!(
            Segment::decode(&encoding),
            Err(Error::DataLoss(_))
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_fails_without_panicking(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            prop_assert!(Segment::decode(&bytes).is_err());
            let prefixed = [&b"TNTRYSEG\x01"[..], &bytes].concat();
            prop_assert!(Segment::decode(&prefixed).is_err());
        }

        /// Some bytes of a zstd frame (the window size) may change without
        /// changing its content; any change that does is refused.
        #[test]
        fn a_changed_byte_is_refused_or_changes_nothing(
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let segment = small_segment();
            let mut encoding = segment.encode().unwrap();
            let at = index.index(encoding.len());
            encoding[at] ^= flip;
            if let Ok(decoded) = Segment::decode(&encoding) {
                prop_assert_eq!(decoded, segment);
            }
        }
    }
}
