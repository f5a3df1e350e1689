//! Open MPI, loaded at run time from its shared library.
//!
//! distil links no MPI at build time: one binary runs alone or under `mpirun`, and neither the
//! build nor CI needs MPI's headers. When `mpirun` starts the process, the library it came
//! with (`libmpi.so.40`, Open MPI 3 to 5; `DISTIL_MPI_LIB` names another path) is opened and
//! the handful of calls distil uses are looked up. Open MPI's handles (`MPI_COMM_WORLD`,
//! `MPI_FLOAT`, `MPI_SUM`, ...) are the addresses of exported objects, so they are looked up
//! the same way. Other MPI families define their handles differently and are refused with a
//! message rather than guessed at.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

use anyhow::{bail, Context, Result};

/// An opaque Open MPI handle: the address of a predefined object.
type Handle = *mut c_void;

type InitThread = unsafe extern "C" fn(*mut c_int, *mut *mut *mut c_char, c_int, *mut c_int) -> c_int;
type CommQuery = unsafe extern "C" fn(Handle, *mut c_int) -> c_int;
type Allreduce = unsafe extern "C" fn(*const c_void, *mut c_void, c_int, Handle, Handle, Handle) -> c_int;
type Barrier = unsafe extern "C" fn(Handle) -> c_int;
type Bcast = unsafe extern "C" fn(*mut c_void, c_int, Handle, c_int, Handle) -> c_int;
type Abort = unsafe extern "C" fn(Handle, c_int) -> c_int;
type Finalize = unsafe extern "C" fn() -> c_int;

/// `MPI_THREAD_FUNNELED`: only the main thread calls MPI (the compute threads never do).
const THREAD_FUNNELED: c_int = 1;
/// Open MPI's `MPI_IN_PLACE`.
const IN_PLACE: *const c_void = std::ptr::without_provenance(1);
/// The most elements one all-reduce call carries (MPI counts are C ints); longer buffers go
/// in several calls.
const MAX_COUNT: usize = 1 << 26;

/// Whether this process was started by an MPI launcher, and by which family's.
pub enum Launch {
    Alone,
    OpenMpi,
    Other(&'static str),
}

pub fn launch() -> Launch {
    let set = |name: &str| std::env::var_os(name).is_some();
    if set("OMPI_COMM_WORLD_SIZE") {
        Launch::OpenMpi
    } else if set("PMI_SIZE") || set("PMI_RANK") {
        Launch::Other("an MPICH-family launcher (PMI_SIZE is set)")
    } else if set("MV2_COMM_WORLD_SIZE") {
        Launch::Other("MVAPICH")
    } else {
        Launch::Alone
    }
}

/// The MPI library, initialised, with `MPI_COMM_WORLD`'s rank and size.
pub struct Mpi {
    allreduce: Allreduce,
    barrier: Barrier,
    bcast: Bcast,
    abort: Abort,
    finalize: Finalize,
    comm_world: Handle,
    float: Handle,
    double: Handle,
    byte: Handle,
    sum: Handle,
    pub rank: usize,
    pub size: usize,
}

// SAFETY: the handles are addresses of objects that live as long as the library, which is
// never closed; calls are made from one thread at a time (`&self` methods are only used by the
// training loop's thread, as MPI_THREAD_FUNNELED requires).
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: checked non-null above.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

struct Library {
    handle: *mut c_void,
    path: String,
}

impl Library {
    fn open() -> Result<Self> {
        let candidates = match std::env::var("DISTIL_MPI_LIB") {
            Ok(path) => vec![path],
            Err(_) => vec!["libmpi.so.40".to_string(), "libmpi.so".to_string()],
        };
        let mut errors = Vec::new();
        for path in candidates {
            let c = CString::new(path.clone()).context("DISTIL_MPI_LIB holds a NUL byte")?;
            // RTLD_GLOBAL: Open MPI's own plugins, which it opens later, resolve symbols of
            // libmpi through the global namespace.
            // SAFETY: dlopen with a valid C string; the library is never closed.
            let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if !handle.is_null() {
                return Ok(Library { handle, path });
            }
            errors.push(format!("{path}: {}", dl_error()));
        }
        bail!(
            "started by mpirun, but Open MPI's library could not be opened ({}); install Open MPI \
             (Debian: openmpi-bin) or name the library with DISTIL_MPI_LIB",
            errors.join("; ")
        )
    }

    fn symbol(&self, name: &str) -> Result<*mut c_void> {
        let c = CString::new(name).expect("symbol names hold no NUL");
        // SAFETY: dlsym on a handle returned by dlopen.
        let ptr = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        if ptr.is_null() {
            bail!("{} has no symbol `{name}`: is it Open MPI's libmpi? ({})", self.path, dl_error());
        }
        Ok(ptr)
    }

    /// A function of the library, as the C type `F`.
    ///
    /// # Safety
    /// `F` must be the function's true C signature.
    unsafe fn function<F: Copy>(&self, name: &str) -> Result<F> {
        let ptr = self.symbol(name)?;
        // SAFETY: a function pointer has the size of a data pointer on the platforms dlsym
        // serves; the caller vouches for the signature.
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&ptr) })
    }
}

fn check(code: c_int, call: &str) -> Result<()> {
    if code != 0 {
        bail!("{call} failed with MPI error code {code}");
    }
    Ok(())
}

impl Mpi {
    /// Opens the library and initialises MPI.
    pub fn init() -> Result<Self> {
        let lib = Library::open()?;
        // SAFETY: the signatures are those of the MPI standard's C bindings.
        let (init_thread, comm_rank, comm_size, allreduce, barrier, bcast, abort, finalize) = unsafe {
            (
                lib.function::<InitThread>("MPI_Init_thread")?,
                lib.function::<CommQuery>("MPI_Comm_rank")?,
                lib.function::<CommQuery>("MPI_Comm_size")?,
                lib.function::<Allreduce>("MPI_Allreduce")?,
                lib.function::<Barrier>("MPI_Barrier")?,
                lib.function::<Bcast>("MPI_Bcast")?,
                lib.function::<Abort>("MPI_Abort")?,
                lib.function::<Finalize>("MPI_Finalize")?,
            )
        };
        let comm_world = lib.symbol("ompi_mpi_comm_world")?;
        let float = lib.symbol("ompi_mpi_float")?;
        let double = lib.symbol("ompi_mpi_double")?;
        let byte = lib.symbol("ompi_mpi_byte")?;
        let sum = lib.symbol("ompi_mpi_op_sum")?;
        let (mut provided, mut rank, mut size) = (0, 0, 0);
        // SAFETY: null argc/argv are allowed since MPI-2; out-pointers are valid.
        unsafe {
            check(
                init_thread(std::ptr::null_mut(), std::ptr::null_mut(), THREAD_FUNNELED, &mut provided),
                "MPI_Init_thread",
            )?;
            check(comm_rank(comm_world, &mut rank), "MPI_Comm_rank")?;
            check(comm_size(comm_world, &mut size), "MPI_Comm_size")?;
        }
        if provided < THREAD_FUNNELED {
            bail!("{} offers thread level {provided}; distil needs MPI_THREAD_FUNNELED", lib.path);
        }
        Ok(Mpi {
            allreduce,
            barrier,
            bcast,
            abort,
            finalize,
            comm_world,
            float,
            double,
            byte,
            sum,
            rank: rank as usize,
            size: size as usize,
        })
    }

    fn sum_in_place(&self, data: *mut c_void, len: usize, elem: usize, datatype: Handle) -> Result<()> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_COUNT);
            // SAFETY: `data` points to `len` elements of the datatype; the range is within it.
            let code = unsafe {
                (self.allreduce)(IN_PLACE, data.byte_add(done * elem), n as c_int, datatype, self.sum, self.comm_world)
            };
            check(code, "MPI_Allreduce")?;
            done += n;
        }
        Ok(())
    }

    /// Sums `data` element-wise over all ranks; every rank receives the sums.
    pub fn sum_f32(&self, data: &mut [f32]) -> Result<()> {
        self.sum_in_place(data.as_mut_ptr().cast(), data.len(), 4, self.float)
    }

    pub fn sum_f64(&self, data: &mut [f64]) -> Result<()> {
        self.sum_in_place(data.as_mut_ptr().cast(), data.len(), 8, self.double)
    }

    /// Rank 0's `data` to every rank (a few bytes: NCCL's unique id).
    pub fn broadcast_bytes(&self, data: &mut [u8]) -> Result<()> {
        // SAFETY: `data` is valid for its length in bytes; the handles are valid.
        let code =
            unsafe { (self.bcast)(data.as_mut_ptr().cast(), data.len() as c_int, self.byte, 0, self.comm_world) };
        check(code, "MPI_Bcast")
    }

    pub fn barrier(&self) -> Result<()> {
        // SAFETY: a valid communicator handle.
        check(unsafe { (self.barrier)(self.comm_world) }, "MPI_Barrier")
    }

    /// Ends every rank of the job with `code`.
    pub fn abort(&self, code: i32) -> ! {
        // SAFETY: a valid communicator handle; MPI_Abort does not return.
        unsafe {
            (self.abort)(self.comm_world, code);
        }
        std::process::exit(code)
    }
}

impl Drop for Mpi {
    fn drop(&mut self) {
        // SAFETY: MPI was initialised by `init`, and this is its only finalisation.
        unsafe {
            (self.finalize)();
        }
    }
}
