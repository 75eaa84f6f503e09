//! Whom an item is about: the ids the item gives, completed from the entry
//! of its change's `contacts` array for that user. Both parsers read the ids
//! their own way and complete them here, so they cannot disagree on the rule.

use std::borrow::Cow;

use crate::event::Contact;

/// A user's ids as an item gives them.
#[derive(Default)]
pub(crate) struct Ids {
    pub(crate) wa_id: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) parent_user_id: Option<String>,
    pub(crate) username: Option<String>,
}

/// The ids a `contacts` entry gives: `wa_id`, `user_id`, `parent_user_id`.
#[derive(Clone, Copy)]
pub(crate) enum IdField {
    Wa,
    User,
    ParentUser,
}

/// What a `contacts` entry's `profile` gives.
#[derive(Clone, Copy)]
pub(crate) enum ProfileField {
    Name,
    Username,
}

impl IdField {
    pub(crate) fn key(self) -> &'static str {
        match self {
            IdField::Wa => "wa_id",
            IdField::User => "user_id",
            IdField::ParentUser => "parent_user_id",
        }
    }
}

impl ProfileField {
    pub(crate) fn key(self) -> &'static str {
        match self {
            ProfileField::Name => "name",
            ProfileField::Username => "username",
        }
    }
}

/// An entry of a change's `contacts` array, as a parser holds it. A field
/// that is missing or empty is `None`.
pub(crate) trait ContactsEntry {
    fn id(&self, field: IdField) -> Option<Cow<'_, str>>;
    fn profile(&self, field: ProfileField) -> Option<Cow<'_, str>>;
}

/// `ids` completed from the entry of `contacts` with the same `wa_id` or
/// `user_id`, else from the only entry when `only_entry_names_it` and none
/// of its ids differs from the item's.
pub(crate) fn complete<E: ContactsEntry>(
    contacts: &[E],
    ids: Ids,
    only_entry_names_it: bool,
) -> Contact {
    let same = |entry: &E, field: IdField, ours: &Option<String>| {
        ours.as_deref()
            .is_some_and(|ours| entry.id(field).as_deref() == Some(ours))
    };
    let differs = |entry: &E, field: IdField, ours: &Option<String>| {
        let theirs = entry.id(field);
        matches!((theirs.as_deref(), ours.as_deref()), (Some(a), Some(b)) if a != b)
    };
    let entry = contacts
        .iter()
        .find(|c| same(c, IdField::Wa, &ids.wa_id) || same(c, IdField::User, &ids.user_id))
        .or_else(|| match contacts {
            [only]
                if only_entry_names_it
                    && !differs(only, IdField::Wa, &ids.wa_id)
                    && !differs(only, IdField::User, &ids.user_id) =>
            {
                Some(only)
            }
            _ => None,
        });
    let from_entry = |field| entry.and_then(|c| c.id(field)).map(Cow::into_owned);
    let from_profile = |field| entry.and_then(|c| c.profile(field)).map(Cow::into_owned);
    Contact {
        wa_id: ids.wa_id.or_else(|| from_entry(IdField::Wa)),
        user_id: ids.user_id.or_else(|| from_entry(IdField::User)),
        parent_user_id: ids
            .parent_user_id
            .or_else(|| from_entry(IdField::ParentUser)),
        username: ids
            .username
            .or_else(|| from_profile(ProfileField::Username)),
        profile_name: from_profile(ProfileField::Name),
    }
}
