//! git's pkt-line framing, the little of it the gate writes or reads itself:
//! a four-hex-digit length (itself included) then the payload; `0000` is a
//! flush. The object work and the rest of the protocol are left to `git`.

use std::fmt;

/// Largest pkt-line payload git sends or accepts (65520 - 4).
pub const MAX_PAYLOAD: usize = 65516;
/// Largest side-band-64k data chunk: a pkt-line minus the band byte.
pub const MAX_BAND_DATA: usize = MAX_PAYLOAD - 1;

/// The flush packet.
pub const FLUSH: &[u8] = b"0000";

/// One pkt-line holding `payload` (at most [`MAX_PAYLOAD`] bytes; longer
/// text is cut: only the gate's own messages go through here).
pub fn line(payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_PAYLOAD)];
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// `text` + newline as one pkt-line.
pub fn text(text: &str) -> Vec<u8> {
    let mut p = text.as_bytes().to_vec();
    p.push(b'\n');
    line(&p)
}

/// `data` on side-band `band` (1 data, 2 progress, 3 error), split into
/// as many pkt-lines as it takes.
pub fn band(band: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(MAX_BAND_DATA) {
        let mut p = Vec::with_capacity(chunk.len() + 1);
        p.push(band);
        p.extend_from_slice(chunk);
        out.extend(line(&p));
    }
    out
}

/// A malformed pkt-line stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PktError(pub String);

impl fmt::Display for PktError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed pkt-line: {}", self.0)
    }
}

impl std::error::Error for PktError {}

/// What one read of a pkt-line stream gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkt {
    /// `0000`.
    Flush,
    /// `0001` (v2 delimiter).
    Delim,
    /// `0002` (v2 response end).
    End,
    Data(Vec<u8>),
}

/// Parses the length header `hdr` (four hex digits).
pub fn length(hdr: [u8; 4]) -> Result<usize, PktError> {
    let s = std::str::from_utf8(&hdr).map_err(|_| PktError("non-hex length".into()))?;
    let n = usize::from_str_radix(s, 16).map_err(|_| PktError(format!("length {s:?}")))?;
    if n == 3 || n > MAX_PAYLOAD + 4 {
        return Err(PktError(format!("length {n}")));
    }
    Ok(n)
}

/// Reads one pkt-line from `r`.
pub async fn read<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Pkt> {
    use tokio::io::AsyncReadExt;
    let mut hdr = [0u8; 4];
    r.read_exact(&mut hdr).await?;
    let n = length(hdr).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(match n {
        0 => Pkt::Flush,
        1 => Pkt::Delim,
        2 => Pkt::End,
        n => {
            let mut buf = vec![0u8; n - 4];
            r.read_exact(&mut buf).await?;
            Pkt::Data(buf)
        }
    })
}

/// The first data pkt-line of `body`, if `body` starts with one.
pub fn first(body: &[u8]) -> Option<&[u8]> {
    let hdr: [u8; 4] = body.get(..4)?.try_into().ok()?;
    let n = length(hdr).ok()?;
    (n > 4).then(|| body.get(4..n)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_reads_back() {
        assert_eq!(text("unpack ok"), b"000eunpack ok\n");
        assert_eq!(line(b""), b"0004");
        let b = band(2, b"hi");
        assert_eq!(b, b"0007\x02hi");
        let big = band(1, &vec![b'x'; MAX_BAND_DATA + 10]);
        assert_eq!(&big[..4], b"fff0");
        assert_eq!(
            first(b"0014command=ls-refs\n0000"),
            Some(&b"command=ls-refs\n"[..])
        );
        assert_eq!(first(b"0000"), None);
        assert_eq!(first(b"zz"), None);
        assert!(length(*b"0003").is_err());
        assert!(length(*b"fff5").is_err());
        assert!(length(*b"xyz0").is_err());
    }

    #[tokio::test]
    async fn reads_a_stream() {
        let mut s: &[u8] = b"0009hello0000000100020005";
        assert_eq!(read(&mut s).await.unwrap(), Pkt::Data(b"hello".to_vec()));
        assert_eq!(read(&mut s).await.unwrap(), Pkt::Flush);
        assert_eq!(read(&mut s).await.unwrap(), Pkt::Delim);
        assert_eq!(read(&mut s).await.unwrap(), Pkt::End);
        assert!(read(&mut s).await.is_err());
    }
}
