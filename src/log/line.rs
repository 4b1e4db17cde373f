//! A log line built in place: text and numbers appended to a reused buffer, no `fmt`.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// One line under construction. Keep it between lines (its capacity is the point).
#[derive(Debug, Default)]
pub struct LineBuf {
    bytes: Vec<u8>,
    /// The second of the last timestamp and its `YYYY-MM-DDTHH:MM:SS.` text.
    second: u64,
    second_text: [u8; 20],
}

impl LineBuf {
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn push(&mut self, text: &str) {
        self.bytes.extend_from_slice(text.as_bytes());
    }

    pub fn push_u64(&mut self, n: u64) {
        self.bytes
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    /// `whole.fraction` with exactly three decimals (milliseconds from microseconds, say).
    pub fn push_thousandths(&mut self, thousandths: u64) {
        self.push_u64(thousandths / 1000);
        let frac = thousandths % 1000;
        self.bytes.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }

    /// `text` between double quotes, escaped as JSON escapes it (which is also how the text
    /// format quotes a string: `"`, `\` and control characters escaped, nothing else touched).
    pub fn push_quoted(&mut self, text: &str) {
        self.bytes.push(b'"');
        let bytes = text.as_bytes();
        // Nearly always nothing to escape: a branch-free pass (the compiler vectorises it),
        // then one copy.
        let escapes = bytes.iter().fold(false, |any, &b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if !escapes {
            self.bytes.extend_from_slice(bytes);
            self.bytes.push(b'"');
            return;
        }
        let mut clean = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !ESCAPED[usize::from(b)] {
                continue;
            }
            self.bytes.extend_from_slice(&text.as_bytes()[clean..i]);
            clean = i + 1;
            match b {
                b'"' => self.bytes.extend_from_slice(b"\\\""),
                b'\\' => self.bytes.extend_from_slice(b"\\\\"),
                b'\n' => self.bytes.extend_from_slice(b"\\n"),
                b'\r' => self.bytes.extend_from_slice(b"\\r"),
                b'\t' => self.bytes.extend_from_slice(b"\\t"),
                0x08 => self.bytes.extend_from_slice(b"\\b"),
                0x0c => self.bytes.extend_from_slice(b"\\f"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    self.bytes.extend_from_slice(b"\\u00");
                    self.bytes.push(HEX[usize::from(b >> 4)]);
                    self.bytes.push(HEX[usize::from(b & 0xf)]);
                }
            }
        }
        self.bytes.extend_from_slice(&text.as_bytes()[clean..]);
        self.bytes.push(b'"');
    }

    /// `a.b.c.d:port`; IPv6 as `[addr]:port` (through `fmt`, rare enough).
    pub fn push_socket_addr(&mut self, addr: SocketAddr) {
        match addr.ip() {
            IpAddr::V4(ip) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.bytes.push(b'.');
                    }
                    self.push_u64(u64::from(octet));
                }
                self.bytes.push(b':');
                self.push_u64(u64::from(addr.port()));
            }
            IpAddr::V6(_) => {
                use std::io::Write;
                let _ = write!(self.bytes, "{addr}");
            }
        }
    }

    /// Now, as RFC 3339 UTC with microseconds: `2026-12-07T00:47:07.123456Z`, as
    /// `tracing-subscriber` writes its timestamps. The date and time are worked out once a second.
    pub fn push_now(&mut self) {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.push_timestamp(since.as_secs(), since.subsec_micros());
    }

    fn push_timestamp(&mut self, second: u64, micros: u32) {
        if second != self.second || self.second_text[0] == 0 {
            self.second = second;
            self.second_text = second_text(second);
        }
        self.bytes.extend_from_slice(&self.second_text);
        let mut digits = [b'0'; 6];
        let mut rest = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        self.bytes.extend_from_slice(&digits);
        self.bytes.push(b'Z');
    }
}

/// The bytes a quoted string escapes: control characters, `"` and `\`.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// `YYYY-MM-DDTHH:MM:SS.` of a Unix second.
fn second_text(second: u64) -> [u8; 20] {
    let (year, month, day) = crate::model::civil_from_days(second / 86_400);
    let in_day = second % 86_400;
    let mut text = [0u8; 20];
    let two = |n: u64| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
    text[..4].copy_from_slice(&[
        b'0' + (year / 1000 % 10) as u8,
        b'0' + (year / 100 % 10) as u8,
        b'0' + (year / 10 % 10) as u8,
        b'0' + (year % 10) as u8,
    ]);
    text[4] = b'-';
    text[5..7].copy_from_slice(&two(month));
    text[7] = b'-';
    text[8..10].copy_from_slice(&two(day));
    text[10] = b'T';
    text[11..13].copy_from_slice(&two(in_day / 3600));
    text[13] = b':';
    text[14..16].copy_from_slice(&two(in_day / 60 % 60));
    text[16] = b':';
    text[17..19].copy_from_slice(&two(in_day % 60));
    text[19] = b'.';
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(f: impl FnOnce(&mut LineBuf)) -> String {
        let mut line = LineBuf::default();
        f(&mut line);
        String::from_utf8(line.as_bytes().to_vec()).expect("utf-8")
    }

    #[test]
    fn timestamps_match_the_calendar() {
        // 2024-02-29T23:59:59 UTC, a leap day, and the second after it.
        assert_eq!(
            built(|l| l.push_timestamp(1_709_251_199, 7)),
            "2024-02-29T23:59:59.000007Z"
        );
        assert_eq!(
            built(|l| l.push_timestamp(1_709_251_200, 999_999)),
            "2024-03-01T00:00:00.999999Z"
        );
        assert_eq!(
            built(|l| l.push_timestamp(0, 0)),
            "1970-01-01T00:00:00.000000Z"
        );
        // The cached second is replaced when the second changes.
        assert_eq!(
            built(|l| {
                l.push_timestamp(86_399, 1);
                l.clear();
                l.push_timestamp(86_400, 2);
            }),
            "1970-01-02T00:00:00.000002Z"
        );
    }

    #[test]
    fn quoting_escapes_as_json_does() {
        for text in [
            "plain /api/v1",
            "quote \" back \\ slash",
            "ctl \u{1}\n\t\r\u{8}\u{c}\u{1f} end",
            "ünï ✓",
            "",
        ] {
            let quoted = built(|l| l.push_quoted(text));
            assert_eq!(
                quoted,
                serde_json::to_string(text).expect("json"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn numbers_and_addresses() {
        assert_eq!(built(|l| l.push_thousandths(1_423)), "1.423");
        assert_eq!(built(|l| l.push_thousandths(5)), "0.005");
        assert_eq!(built(|l| l.push_thousandths(120_050)), "120.050");
        assert_eq!(built(|l| l.push_u64(u64::MAX)), u64::MAX.to_string());
        let v4: SocketAddr = "10.0.255.9:52114".parse().expect("addr");
        assert_eq!(built(|l| l.push_socket_addr(v4)), "10.0.255.9:52114");
        let v6: SocketAddr = "[::1]:8080".parse().expect("addr");
        assert_eq!(built(|l| l.push_socket_addr(v6)), "[::1]:8080");
    }
}
