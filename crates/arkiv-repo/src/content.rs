//! Reading a file's or stream's content back as one `Read`: what copy
//! re-chunks and what database restores pipe into their tools.

use std::collections::HashMap;
use std::io::Read;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::Indexed;

/// Blobs fetched ahead of the reader: about 32 MiB at the average chunk size.
const PREFETCH_BLOBS: usize = 32;

/// Reads a file's content as one stream, fetching its blobs a window at a
/// time with few, parallel requests rather than one request per chunk.
pub struct ContentReader<'a> {
    src: &'a Indexed,
    ids: &'a [Id],
    next: usize,
    window: std::collections::VecDeque<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> ContentReader<'a> {
    /// A reader of the content made of `ids`, in order.
    pub fn new(src: &'a Indexed, ids: &'a [Id]) -> ContentReader<'a> {
        ContentReader { src, ids, next: 0, window: Default::default(), buf: Vec::new(), pos: 0 }
    }

    fn fill(&mut self) -> Result<()> {
        let end = (self.next + PREFETCH_BLOBS).min(self.ids.len());
        let wanted = &self.ids[self.next..end];
        let got: std::sync::Mutex<HashMap<Id, Result<Vec<u8>>>> = Default::default();
        self.src.for_each_blob(wanted, |id, r| {
            got.lock().unwrap().insert(id, r.map(<[u8]>::to_vec));
        })?;
        let mut got = got.into_inner().unwrap();
        for (i, id) in wanted.iter().enumerate() {
            // A blob repeated within the window was fetched once: only a
            // repeat costs a copy.
            let repeated = wanted[i + 1..].contains(id);
            let data = match (got.get(id), repeated) {
                (Some(Ok(d)), true) => d.clone(),
                (Some(Ok(_)), false) => got.remove(id).and_then(|r| r.ok()).expect("present"),
                (Some(Err(e)), _) => return Err(e.duplicate()),
                (None, _) => return Err(Error::BlobNotFound(*id)),
            };
            self.window.push_back(data);
        }
        self.next = end;
        Ok(())
    }
}

impl Read for ContentReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.window.is_empty() {
                if self.next == self.ids.len() {
                    return Ok(0);
                }
                self.fill().map_err(std::io::Error::other)?;
            }
            self.buf = self.window.pop_front().unwrap_or_default();
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
