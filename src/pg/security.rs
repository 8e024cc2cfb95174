//! Running a piece of work with another role's rights, as `SECURITY DEFINER` functions do.

use pgrx::pg_sys;

/// Runs `f` as role `role` (for permission checks), then restores the current role and security
/// context, also when `f` raises an error (PostgreSQL restores them at (sub)transaction abort as
/// well). Used so that what mm_conflict records on the side (tombstones, conflict log rows) is
/// written with the rights of the extension's owner, whoever writes the user's table.
pub fn as_user<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: puts back the role and context that were current on entry.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) }
        }
    }
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads and sets the backend's current role; SECURITY_LOCAL_USERID_CHANGE marks the
    // change as local (as SECURITY DEFINER does), so SET ROLE and the like cannot escape it.
    let _restore = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(role, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
        Restore(user, context)
    };
    f()
}
