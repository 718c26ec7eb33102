//! Host-side writes of device blocks into the large row-major f64
//! matrices the dense representations are stored in (the NTK, the dense
//! Fisher). These passes are memory-bound, so each is done once, tiled so
//! that a transposed write stays in cache, and in parallel over the rows it
//! writes.

use crate::linalg::HostElem;
use rayon::prelude::*;

/// Side of the square tiles a transposed copy moves at once (64 × 64 f64
/// is 32 KB: the source tile and its destination rows stay in L1/L2).
const TILE: usize = 64;

/// Where a block `[rows, cols]` goes in a row-major host matrix `dst` with
/// rows of length `ld`: at row `r0`, column `c0`, and with `mirror` also
/// transposed at row `c0`, column `r0` (the other triangle of a
/// symmetric matrix); with `accumulate` it is added to what is there.
#[derive(Clone, Copy, Debug)]
pub struct BlockAt {
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub r0: usize,
    pub c0: usize,
    pub mirror: bool,
    pub accumulate: bool,
}

/// Writes `src [rows, cols]` (row-major, any float type) into `dst` (f64,
/// or f32 for a float32 run's stored NTK) as `at` says, converting on the
/// way: one pass for the block and one tiled pass for its mirror, instead
/// of a conversion, a copy and a transposed copy. A mirror must not
/// overlap the block's own rows.
pub fn write_block<D, T>(src: &[D], dst: &mut [T], at: BlockAt)
where
    D: Copy + Into<f64> + Send + Sync,
    T: HostElem,
{
    let BlockAt {
        rows,
        cols,
        ld,
        r0,
        c0,
        mirror,
        accumulate,
    } = at;
    if rows == 0 || cols == 0 {
        return;
    }
    let src = &src[..rows * cols];
    let put = |d: &mut T, v: D| {
        if accumulate {
            *d = T::from_f64(d.to_f64() + v.into())
        } else {
            *d = T::from_f64(v.into())
        }
    };
    let direct = |region: &mut [T]| {
        region
            .par_chunks_mut(ld)
            .zip(src.par_chunks(cols))
            .for_each(|(row, s)| {
                for (d, &v) in row[c0..c0 + cols].iter_mut().zip(s) {
                    put(d, v);
                }
            });
    };
    // Destination rows `c0 + j` take source column `j`: TILE rows of the
    // destination per task, read TILE source rows at a time.
    let transposed = |region: &mut [T]| {
        region
            .par_chunks_mut(TILE * ld)
            .enumerate()
            .for_each(|(t, band)| {
                let j0 = t * TILE;
                for i0 in (0..rows).step_by(TILE) {
                    let i1 = (i0 + TILE).min(rows);
                    for (jj, row) in band.chunks_mut(ld).enumerate() {
                        let j = j0 + jj;
                        for (i, d) in (i0..i1).zip(&mut row[r0 + i0..r0 + i1]) {
                            put(d, src[i * cols + j]);
                        }
                    }
                }
            });
    };
    if !mirror {
        direct(&mut dst[r0 * ld..(r0 + rows) * ld]);
        return;
    }
    assert!(
        r0 + rows <= c0 || c0 + cols <= r0,
        "a mirrored block overlaps its own rows"
    );
    if r0 < c0 {
        let (top, bottom) = dst.split_at_mut(c0 * ld);
        direct(&mut top[r0 * ld..(r0 + rows) * ld]);
        transposed(&mut bottom[..cols * ld]);
    } else {
        let (top, bottom) = dst.split_at_mut(r0 * ld);
        transposed(&mut top[c0 * ld..(c0 + cols) * ld]);
        direct(&mut bottom[..rows * ld]);
    }
}

/// A square row-major `[p, p]` matrix whose upper triangle (diagonal
/// included) holds the result: scales that triangle by `scale` and copies
/// it into the lower one, in one tiled pass, so the result is exactly
/// symmetric. Bands of rows are finished in order; each band's lower part
/// is read from the rows above it, already final.
pub fn mirror_upper<T: HostElem>(a: &mut [T], p: usize, scale: f64) {
    const BAND: usize = 256;
    for i0 in (0..p).step_by(BAND) {
        let (top, rest) = a.split_at_mut(i0 * p);
        let i1 = (i0 + BAND).min(p);
        let band = &mut rest[..(i1 - i0) * p];
        let top = &*top;
        band.par_chunks_mut(TILE * p)
            .enumerate()
            .for_each(|(t, rows)| {
                let r0 = i0 + t * TILE;
                // The upper part of these rows, scaled.
                for (r, row) in rows.chunks_mut(p).enumerate() {
                    row[r0 + r..]
                        .iter_mut()
                        .for_each(|x| *x = T::from_f64(x.to_f64() * scale));
                }
                // Columns below `i0` from the (final) rows above the band.
                for j0 in (0..i0).step_by(TILE) {
                    let j1 = (j0 + TILE).min(i0);
                    for (r, row) in rows.chunks_mut(p).enumerate() {
                        let i = r0 + r;
                        for (j, d) in (j0..j1).zip(&mut row[j0..j1]) {
                            *d = top[j * p + i];
                        }
                    }
                }
            });
        // Inside the band, below the diagonal: from its own (scaled) rows.
        for i in i0 + 1..i1 {
            for j in i0..i {
                band[(i - i0) * p + j] = band[(j - i0) * p + i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_and_mirror_land_where_a_naive_copy_puts_them() {
        let (rows, cols, ld) = (70, 130, 300);
        let src: Vec<f32> = (0..rows * cols).map(|x| x as f32 * 0.5).collect();
        for (r0, c0) in [(0, 140), (150, 5)] {
            for accumulate in [false, true] {
                let mut dst = vec![1.0; ld * ld];
                let mut want = dst.clone();
                for i in 0..rows {
                    for j in 0..cols {
                        let v = src[i * cols + j] as f64;
                        let base = if accumulate { 1.0 } else { 0.0 };
                        want[(r0 + i) * ld + c0 + j] = base + v;
                        want[(c0 + j) * ld + r0 + i] = base + v;
                    }
                }
                let at = BlockAt {
                    rows,
                    cols,
                    ld,
                    r0,
                    c0,
                    mirror: true,
                    accumulate,
                };
                write_block(&src, &mut dst, at);
                assert_eq!(dst, want);
            }
        }
    }

    #[test]
    fn mirror_upper_scales_and_symmetrises() {
        for p in [1, 5, 64, 300, 517] {
            let mut a: Vec<f64> = (0..p * p).map(|x| x as f64).collect();
            let orig = a.clone();
            mirror_upper(&mut a, p, 0.25);
            for i in 0..p {
                for j in 0..p {
                    let (u, v) = (i.min(j), i.max(j));
                    assert_eq!(a[i * p + j], orig[u * p + v] * 0.25, "p {p} ({i}, {j})");
                }
            }
            // In f32, each value is the f64 result rounded once.
            let mut b: Vec<f32> = orig.iter().map(|&x| (x * 0.3) as f32).collect();
            let src = b.clone();
            mirror_upper(&mut b, p, 1.0 / 3.0);
            for i in 0..p {
                for j in 0..p {
                    let (u, v) = (i.min(j), i.max(j));
                    let want = (src[u * p + v] as f64 * (1.0 / 3.0)) as f32;
                    assert_eq!(b[i * p + j], want, "f32 p {p} ({i}, {j})");
                }
            }
        }
    }
}
