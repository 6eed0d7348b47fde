/// How [`Comm::all_reduce`](super::Comm::all_reduce) combines values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Sum,
    Min,
    Max,
    Prod,
}

impl Op {
    pub(crate) fn code(self) -> u64 {
        self as u64
    }
}

/// Element types the collectives move without serialisation.
pub trait Reduce: Copy + Send + Sync + 'static {
    /// Identifies the type when ranks compare what they called.
    const NAME: &'static str;
    fn combine(self, other: Self, op: Op) -> Self;

    /// The element's MPI datatype (for the `mpi` feature's backend; `None`: not movable over MPI).
    #[cfg(feature = "mpi")]
    #[doc(hidden)]
    fn mpi_datatype() -> Option<mpi::datatype::DatatypeRef<'static>> {
        None
    }

    /// `out[i] = out[i] op src[i]`, with the op chosen once so the loop vectorises.
    fn combine_slice(out: &mut [Self], src: &[Self], op: Op) {
        match op {
            Op::Sum => out.iter_mut().zip(src).for_each(|(o, s)| *o = o.combine(*s, Op::Sum)),
            Op::Prod => out.iter_mut().zip(src).for_each(|(o, s)| *o = o.combine(*s, Op::Prod)),
            Op::Min => out.iter_mut().zip(src).for_each(|(o, s)| *o = o.combine(*s, Op::Min)),
            Op::Max => out.iter_mut().zip(src).for_each(|(o, s)| *o = o.combine(*s, Op::Max)),
        }
    }
}

macro_rules! reduce_float {
    ($($t:ty),*) => {$(
        impl Reduce for $t {
            const NAME: &'static str = stringify!($t);
            #[cfg(feature = "mpi")]
            fn mpi_datatype() -> Option<mpi::datatype::DatatypeRef<'static>> {
                Some(<$t as mpi::traits::Equivalence>::equivalent_datatype())
            }
            #[inline]
            fn combine(self, other: Self, op: Op) -> Self {
                match op {
                    Op::Sum => self + other,
                    Op::Prod => self * other,
                    Op::Min => self.min(other),
                    Op::Max => self.max(other),
                }
            }
        }
    )*};
}

// Integers wrap on overflow, as MPI's do, rather than panicking in one rank.
macro_rules! reduce_int {
    ($($t:ty),*) => {$(
        impl Reduce for $t {
            const NAME: &'static str = stringify!($t);
            #[cfg(feature = "mpi")]
            fn mpi_datatype() -> Option<mpi::datatype::DatatypeRef<'static>> {
                Some(<$t as mpi::traits::Equivalence>::equivalent_datatype())
            }
            #[inline]
            fn combine(self, other: Self, op: Op) -> Self {
                match op {
                    Op::Sum => self.wrapping_add(other),
                    Op::Prod => self.wrapping_mul(other),
                    Op::Min => self.min(other),
                    Op::Max => self.max(other),
                }
            }
        }
    )*};
}

reduce_float!(f32, f64);
reduce_int!(i8, i16, i32, i64, u8, u16, u32, u64, isize, usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops() {
        assert_eq!(2.0f32.combine(3.0, Op::Sum), 5.0);
        assert_eq!(2i32.combine(3, Op::Prod), 6);
        assert_eq!(2u64.combine(3, Op::Min), 2);
        assert_eq!(2i64.combine(3, Op::Max), 3);
        assert_eq!(u8::MAX.combine(1, Op::Sum), 0);
        let mut out = [1.0f64, 5.0];
        f64::combine_slice(&mut out, &[2.0, 3.0], Op::Min);
        assert_eq!(out, [1.0, 3.0]);
    }
}
