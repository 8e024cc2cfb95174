//! Positions in the write-ahead log.

/// Size of a WAL page's short header (`SizeOfXLogShortPHD`: `MAXALIGN` of 20 bytes).
pub const SHORT_PAGE_HEADER: u64 = 24;
/// Size of the long header that opens each segment (`SizeOfXLogLongPHD`).
pub const LONG_PAGE_HEADER: u64 = 40;

/// The end of the last record before WAL insert position `insert`, on pages of `page` bytes in
/// segments of `segment` bytes. The insert position of an empty page lies after the page's
/// header, where no record ends: PostgreSQL refuses to flush up to there ("xlog flush request
/// ... is not satisfied") and a walsender never reports it, so a wait must aim at the end of the
/// last record, the page's start.
pub fn last_record_end(insert: u64, page: u64, segment: u64) -> u64 {
    if segment > 0 && insert % segment == LONG_PAGE_HEADER {
        insert - LONG_PAGE_HEADER
    } else if page > 0 && insert % page == SHORT_PAGE_HEADER {
        insert - SHORT_PAGE_HEADER
    } else {
        insert
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 8192;
    const SEGMENT: u64 = 16 << 20;

    #[test]
    fn positions_after_a_page_header_go_back_to_the_page_start() {
        // The failure CI met: 0/1B6E018, flushed only to 0/1B6E000.
        assert_eq!(last_record_end(0x1B6E018, PAGE, SEGMENT), 0x1B6E000);
        // A segment's first page has the long header.
        assert_eq!(last_record_end(0x2000028, PAGE, SEGMENT), 0x2000000);
        assert_eq!(last_record_end(0x2002018, PAGE, SEGMENT), 0x2002000);
    }

    #[test]
    fn positions_after_a_record_stay() {
        for insert in [0x1B6E000, 0x1B6E020, 0x1B6E0A8, 0x2000040, 0x1FFFFF8] {
            assert_eq!(
                last_record_end(insert, PAGE, SEGMENT),
                insert,
                "{insert:#x}"
            );
        }
    }
}
