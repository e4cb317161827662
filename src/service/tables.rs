//! Services that own storage tables, declared with their tables, dependencies and in-memory state,
//! so each gets its struct and constructor without writing out the wiring.

/// Declares `struct Tables` holding a [`Table`](crate::storage::Table) of each keyspace listed
/// (`field: tables::Name<Record>,`), with `Tables::new(&db)` opening them all.
macro_rules! keyspaces {
    ($($(#[$doc:meta])* $field:ident: $schema:ty,)*) => {
        /// The keyspaces this service owns.
        struct Tables {
            $($(#[$doc])* $field: $crate::storage::Table<$schema>,)*
        }

        impl Tables {
            fn new(db: &$crate::storage::Db) -> Self {
                Self {
                    $($field: $crate::storage::Table::new(db),)*
                }
            }
        }
    };
}

/// Declares a service's `pub struct Service` and its `new(db, deps…)`: the database, its
/// keyspaces (reached as `self.tables.name`), the dependencies `new` takes in the order listed, and
/// state each starts from the expression given.
macro_rules! service {
    (
        tables { $($(#[$tdoc:meta])* $table:ident: $schema:ty,)* }
        deps { $($(#[$ddoc:meta])* $dep:ident: $dep_ty:ty,)* }
        state { $($(#[$sdoc:meta])* $field:ident: $field_ty:ty = $init:expr,)* }
    ) => {
        $crate::service::tables::keyspaces! { $($(#[$tdoc])* $table: $schema,)* }

        pub struct Service {
            db: $crate::storage::Db,
            tables: Tables,
            $($(#[$ddoc])* $dep: $dep_ty,)*
            $($(#[$sdoc])* $field: $field_ty,)*
        }

        impl Service {
            pub fn new(db: $crate::storage::Db, $($dep: $dep_ty),*) -> Self {
                Self {
                    tables: Tables::new(&db),
                    db,
                    $($dep,)*
                    $($field: $init,)*
                }
            }
        }
    };
}

pub(crate) use {keyspaces, service};
