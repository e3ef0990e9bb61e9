//! The `settings!` macro: a table of keys, one entry a key, from which the public config
//! struct, its built-in defaults, the per-layer slots, the list of known keys, the reading
//! of a TOML table and the merging of layers are all generated. Before it, every pool key
//! was spelled six times by hand and a new key could be read but never resolved.
//!
//! The grammar, by example (see `pool.rs` and `server.rs` for the real tables):
//!
//! ```text
//! settings! {
//!     /// Docs of the public struct.
//!     #[derive(Debug, Clone, PartialEq)]
//!     pub struct PoolConfig, layer PoolLayer, keys LAYER_KEYS, section Section::Layer {
//!         given {                      // fields that are not keys; passed to `builtin`
//!             /// The NAME of [pools.NAME].
//!             name: String,
//!         }
//!         keys {                       // field: type = built-in default, reader [, merge f];
//!             /// Docs of the field.
//!             max_queue: usize = 1000, |cx, e| cx.count(e, 0, "");
//!             env: Env = Env::new(), |cx, e| cx.env(e), merge union_env;
//!         }
//!         tables {                     // nested tables, themselves made by `settings!`
//!             /// Docs of the field.
//!             security: SecurityConfig, layer SecurityLayer;
//!         }
//!     }
//! }
//! ```
//!
//! The reader is a closure over the [`Ctx`](super::read::Ctx) and the key's
//! [`Entry`](super::read::Entry) returning a `Slot` of the field's type; it carries the
//! value's shape, its check and the hints of its messages. Without `merge`, the pool's
//! own value wins over `[defaults]`, which wins over the built-in default
//! ([`overlay`](super::read::overlay)); `merge` names another `fn(&Slot<T>, &Slot<T>, T) -> T`.
//! Rules between keys (`min <= warm <= max`) cannot be said one key at a time and are
//! checked by hand after merging.
//!
//! Generated, for `pub struct S, layer L, keys K, section X`:
//! - `pub struct S` with every given, key and table field, all `pub`, in table order;
//! - `S::builtin(given...) -> S`, the built-in defaults (the only place they are written);
//! - `S::merge(pool: &L, defaults: &L, builtin: S) -> S`;
//! - `struct L`, one `Slot` per key and one `L` per nested table, `Default` = all unset;
//! - `L::read(cx, table, prefix) -> L`, which reads every key where it is written and
//!   reports unknown keys as belonging to section `X`;
//! - `const K: &[&str]`, the key names in table order (suggestions and messages use it,
//!   so the order is part of the messages).

macro_rules! settings {
    (@merge) => { $crate::config::read::overlay };
    (@merge $merge:path) => { $merge };
    (
        $(#[$meta:meta])*
        pub struct $Config:ident, layer $Layer:ident, keys $KEYS:ident, section $section:path {
            given {
                $( $(#[$gmeta:meta])* $gfield:ident : $gty:ty, )*
            }
            keys {
                $(
                    $(#[$kmeta:meta])*
                    $field:ident : $ty:ty = $default:expr, $read:expr $(, merge $merge:path)? ;
                )*
            }
            tables {
                $( $(#[$tmeta:meta])* $tfield:ident : $tty:ty, layer $tlayer:ty; )*
            }
        }
    ) => {
        $(#[$meta])*
        pub struct $Config {
            $( $(#[$gmeta])* pub $gfield: $gty, )*
            $( $(#[$kmeta])* pub $field: $ty, )*
            $( $(#[$tmeta])* pub $tfield: $tty, )*
        }

        impl $Config {
            /// Every key at its built-in default.
            pub(super) fn builtin($($gfield: $gty),*) -> Self {
                $Config {
                    $( $gfield, )*
                    $( $field: $default, )*
                    $( $tfield: <$tty>::default(), )*
                }
            }

            /// One layer over another over the built-in defaults, key by key. Checks
            /// nothing: every value was checked when it was read.
            pub(super) fn merge(pool: &$Layer, defaults: &$Layer, builtin: Self) -> Self {
                $Config {
                    $( $gfield: builtin.$gfield, )*
                    $(
                        $field: {
                            let merge: fn(
                                &$crate::config::read::Slot<$ty>,
                                &$crate::config::read::Slot<$ty>,
                                $ty,
                            ) -> $ty = settings!(@merge $($merge)?);
                            merge(&pool.$field, &defaults.$field, builtin.$field)
                        },
                    )*
                    $( $tfield: <$tty>::merge(&pool.$tfield, &defaults.$tfield, builtin.$tfield), )*
                }
            }
        }

        /// What one table (`[defaults]`, `[pools.NAME]`, ...) wrote, key by key.
        #[derive(Default)]
        pub(super) struct $Layer {
            $( pub(super) $field: $crate::config::read::Slot<$ty>, )*
            $( pub(super) $tfield: $tlayer, )*
        }

        /// The keys of this table, in the order messages list them.
        pub(super) const $KEYS: &[&str] = &[ $( stringify!($field), )* $( stringify!($tfield), )* ];

        impl $Layer {
            /// Reads every key of `table` (found at `prefix`, such as `pools.coder`),
            /// reporting each problem at its place and leaving a bad key `Bad`.
            // Each reader is written as a closure in the table and called right here; binding
            // it to a fn pointer first is what gives the closure its argument types.
            #[allow(clippy::redundant_closure_call)]
            pub(super) fn read(
                cx: &mut $crate::config::read::Ctx<'_>,
                table: &dyn toml_edit::TableLike,
                prefix: &str,
            ) -> Self {
                let mut layer = Self::default();
                for e in cx.entries(table, prefix) {
                    let e = &e;
                    match e.name {
                        $(
                            stringify!($field) => {
                                let read: fn(
                                    &mut $crate::config::read::Ctx<'_>,
                                    &$crate::config::read::Entry<'_>,
                                ) -> $crate::config::read::Slot<$ty> = $read;
                                layer.$field = read(cx, e);
                            }
                        )*
                        $(
                            stringify!($tfield) => {
                                if let Some(t) = cx.table(e) {
                                    layer.$tfield = <$tlayer>::read(cx, t, &e.path);
                                }
                            }
                        )*
                        _ => cx.unknown(e, $section, prefix),
                    }
                }
                layer
            }
        }
    };
}

pub(super) use settings;
