//! Copying a large result into a rank's own buffer without reading that buffer first.
//!
//! An ordinary store to memory that is not in cache first reads the line (to own it), so
//! copying a collective's result out of the cache-resident slots into a buffer far larger
//! than the cache moves every byte twice. Streaming stores (x86's non-temporal `movntdq`,
//! what `memcpy` itself uses for copies this large) write the lines without reading them.
//! Elsewhere this is a plain copy.

/// Buffers at least this large get streaming stores: smaller ones are likely still in
/// cache when the caller reads them, and streaming would push them out.
pub const STREAM_MIN_BYTES: usize = 8 << 20;

/// Copies `n` bytes from `src` to `dst` with streaming stores. Call [`fence`] before
/// publishing that the copy is done.
///
/// # Safety
/// As `std::ptr::copy_nonoverlapping(src, dst, n)`.
pub unsafe fn copy(src: *const u8, dst: *mut u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        // Streaming stores need 16-byte aligned destinations: the unaligned head and the
        // tail are copied plainly.
        let head = (dst as usize).wrapping_neg() % 16;
        if n < head + 64 {
            // SAFETY: the caller's contract.
            unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
            return;
        }
        // SAFETY: the caller's contract; every access below stays inside [0, n); SSE2 is
        // part of x86_64.
        unsafe {
            std::ptr::copy_nonoverlapping(src, dst, head);
            let mut i = head;
            while i + 64 <= n {
                let s = src.add(i).cast::<__m128i>();
                let d = dst.add(i).cast::<__m128i>();
                let (a, b, c, e) = (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)), _mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
                _mm_stream_si128(d, a);
                _mm_stream_si128(d.add(1), b);
                _mm_stream_si128(d.add(2), c);
                _mm_stream_si128(d.add(3), e);
                i += 64;
            }
            std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), n - i);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's contract.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, n)
    }
}

/// Orders earlier streaming stores before later stores (they are not ordered by the usual
/// release/acquire pairs).
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn copies_every_alignment_and_length_exactly() {
        let src: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for off in 0..17 {
            for n in [0, 1, 15, 16, 63, 64, 65, 127, 200, 983 - off] {
                let mut dst = vec![0u8; 1000];
                // SAFETY: both ranges are in bounds and distinct.
                unsafe { super::copy(src.as_ptr().add(3), dst.as_mut_ptr().add(off), n) };
                super::fence();
                assert_eq!(&dst[off..off + n], &src[3..3 + n], "offset {off}, {n} bytes");
                assert!(dst[..off].iter().all(|b| *b == 0) && dst[off + n..].iter().all(|b| *b == 0));
            }
        }
    }
}
