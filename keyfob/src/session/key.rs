//! Typed session keys: a name and the type stored under it.

use std::{fmt, marker::PhantomData};

/// A typed session key: a name and the type of the value stored under it.
///
/// ```
/// use keyfob::Key;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct User { id: u64 }
///
/// const USER: Key<User> = Key::new("user");
/// assert_eq!(USER.name(), "user");
/// ```
pub struct Key<T> {
    name: &'static str,
    _type: PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    /// A key named `name` holding values of type `T`.
    pub const fn new(name: &'static str) -> Self {
        Key {
            name,
            _type: PhantomData,
        }
    }

    /// The key's name in the session.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Key<T> {}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.name)
    }
}

/// Something that names a session key holding a `T`: a string (any `T`, as
/// in tower-sessions) or a [`Key<T>`] (exactly `T`).
///
/// ```
/// use keyfob::{AsKey, Key};
///
/// fn name_of<T>(k: impl AsKey<T>) -> String { k.key_name().to_string() }
/// assert_eq!(name_of::<u8>("a"), "a");
/// assert_eq!(name_of(Key::<u8>::new("b")), "b");
/// ```
pub trait AsKey<T> {
    /// The key's name.
    fn key_name(&self) -> &str;
}

impl<T> AsKey<T> for &str {
    fn key_name(&self) -> &str {
        self
    }
}

impl<T> AsKey<T> for String {
    fn key_name(&self) -> &str {
        self
    }
}

impl<T> AsKey<T> for &String {
    fn key_name(&self) -> &str {
        self
    }
}

impl<T> AsKey<T> for Key<T> {
    fn key_name(&self) -> &str {
        self.name
    }
}
