//! [`FileStore`]: the [`Store`] that keeps everything in the state folder.
//!
//! It lives inside `ChatServer` and hands the file work to the `Persistence` actor, so
//! no disk access ever runs on the chat thread. It owns the message ids: they are given
//! only within the reservation in `ids.json` ([`IdAllocator`]), and the next block is
//! reserved half a block ahead, so chat never waits for the disk. Blocks grow with the
//! message rate, so that half a block lasts seconds even at tens of thousands of
//! messages a second (a slow `fsync` must not run the ids out).
//!
//! Identity changes that need not be durable at once (rotated tokens, remembered
//! addresses: `Persistence` writes them once a second anyway) are gathered here for
//! [`IDENTITY_BATCH`] and handed over together, so that a burst of logins does not wake
//! the `Persistence` thread twice per login. A durable change, and the shutdown sync,
//! take whatever is gathered first, so the order on disk is the order of the changes.
//!
//! One server owns its state folder, so nothing races it: every decision
//! (a name free, a token live, a room to create) is the one `ChatServer`'s view
//! already made, and this store only writes it down. It has no other nodes to hear
//! from or tell.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{
    AppendHistory, PersistError, Persistence, ReadPage, RecordIdentities, RecordRooms, ReserveIds,
    SyncForShutdown,
};
use crate::codec::payload_of;
use crate::protocol::ChatMessage;
use crate::server::identity::{Account, IdentityChange};
use crate::server::outbound::SessionId;
use crate::server::rooms::RoomChange;
use crate::server::store::history_file::{ID_BLOCK, MAX_ID_BLOCK, MAX_MESSAGE_ID};
use crate::server::store::{
    AccountDeletion, Answer, Delivery, Draft, Joined, NodeSummary, PageRequest, RoomJoin, Spent,
    Store, StoreError, StoreEvents, StoreFuture, Submitted, Target,
};
use bytes::Bytes;

/// How many seconds of ids, at the rate they were last used, a block holds (half of it
/// is the margin the reservation's write has).
const BLOCK_SECONDS: u64 = 10;

/// How long identity changes that need not be durable at once are gathered before they
/// go to `Persistence` (which writes them with its next journal write, every second).
pub const IDENTITY_BATCH: Duration = Duration::from_millis(20);

/// The message ids: which comes next, and how far the durable reservation reaches.
#[derive(Debug)]
pub struct IdAllocator {
    next_id: u64,
    /// The highest id on disk as reserved.
    reserved_through: u64,
    /// A reservation asked for and not yet answered.
    reserving: bool,
    /// Ids per reservation: [`ID_BLOCK`], or more while messages come fast.
    block: u64,
    /// When the last reservation was asked for (or the allocator made), and the next
    /// id then.
    last_asked: (Instant, u64),
}

impl IdAllocator {
    /// Ids from `next_id`, with ids up to `reserved_through` already reserved.
    pub fn new(next_id: u64, reserved_through: u64) -> IdAllocator {
        IdAllocator {
            next_id,
            reserved_through,
            reserving: false,
            block: ID_BLOCK,
            // A burst right after start-up sizes the first block too.
            last_asked: (Instant::now(), next_id),
        }
    }

    /// The last id given (0 before any).
    pub fn last_id(&self) -> u64 {
        self.next_id.saturating_sub(1)
    }

    /// Takes the next id, if it is within the reservation.
    pub fn take(&mut self) -> Option<u64> {
        if self.next_id > self.reserved_through || self.next_id > MAX_MESSAGE_ID {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        Some(id)
    }

    /// The reservation to write now, if one is due (less than half a block left and
    /// none on its way); it is then on its way until [`reserved`](Self::reserved) or
    /// [`reservation_failed`](Self::reservation_failed).
    ///
    /// The block holds [`BLOCK_SECONDS`] of ids at the rate used since the last
    /// reservation was asked for, at least [`ID_BLOCK`] and at most [`MAX_ID_BLOCK`].
    pub fn reservation_due(&mut self, now: impl FnOnce() -> Instant) -> Option<u64> {
        if self.reserving || self.reserved_through.saturating_sub(self.next_id) >= self.block / 2 {
            return None;
        }
        let now = now();
        let (then, id_then) = self.last_asked;
        let used = u128::from(self.next_id.saturating_sub(id_then));
        let elapsed = now
            .saturating_duration_since(then)
            .max(Duration::from_millis(1));
        let wanted = used * u128::from(BLOCK_SECONDS) * 1000 / elapsed.as_millis();
        self.block = (wanted.min(u128::from(MAX_ID_BLOCK)) as u64).max(ID_BLOCK);
        self.last_asked = (now, self.next_id);
        self.reserving = true;
        Some((self.next_id + self.block).min(MAX_MESSAGE_ID))
    }

    /// A reservation up to `through` is on disk.
    pub fn reserved(&mut self, through: u64) {
        self.reserving = false;
        self.reserved_through = self.reserved_through.max(through);
    }

    /// A reservation could not be written; the next message asks again.
    pub fn reservation_failed(&mut self) {
        self.reserving = false;
    }
}

/// The file-backed store. See the module documentation.
pub struct FileStore {
    persistence: Addr<Persistence>,
    /// Shared with the reservation replies, which arrive on this same thread.
    ids: Rc<RefCell<IdAllocator>>,
    /// Identity changes gathered for [`IDENTITY_BATCH`]; shared with the task that
    /// hands them over, on this same thread.
    gathered: Rc<RefCell<Vec<IdentityChange>>>,
}

impl FileStore {
    /// A store writing through `persistence`, giving ids from `ids`.
    pub fn new(persistence: Addr<Persistence>, ids: IdAllocator) -> FileStore {
        FileStore {
            persistence,
            ids: Rc::new(RefCell::new(ids)),
            gathered: Rc::new(RefCell::new(Vec::new())),
        }
    }

    /// Gathers identity changes; the first of a batch starts the task that hands them
    /// over [`IDENTITY_BATCH`] later.
    fn gather(&self, changes: Vec<IdentityChange>) {
        let mut gathered = self.gathered.borrow_mut();
        let first = gathered.is_empty();
        gathered.extend(changes);
        if !first {
            return;
        }
        let (gathered, persistence) = (Rc::clone(&self.gathered), self.persistence.clone());
        actix::spawn(async move {
            tokio::time::sleep(IDENTITY_BATCH).await;
            let changes = std::mem::take(&mut *gathered.borrow_mut());
            if !changes.is_empty() {
                persistence.do_send(RecordIdentities {
                    changes,
                    durable: false,
                });
            }
        });
    }

    /// Takes what is gathered, to go before a change or a sync sent now.
    fn take_gathered(&self) -> Vec<IdentityChange> {
        std::mem::take(&mut *self.gathered.borrow_mut())
    }

    /// Asks `Persistence` for the next block of ids when the reservation runs low.
    fn reserve_if_due(&self) {
        let Some(through) = self.ids.borrow_mut().reservation_due(Instant::now) else {
            return;
        };
        let sent = self.persistence.send(ReserveIds { through });
        let ids = Rc::clone(&self.ids);
        actix::spawn(async move {
            match sent.await {
                Ok(Ok(())) => ids.borrow_mut().reserved(through),
                Ok(Err(err)) => {
                    log::error!("message ids not reserved: {err}");
                    ids.borrow_mut().reservation_failed();
                }
                Err(err) => {
                    log::error!("message ids not reserved: {err}");
                    ids.borrow_mut().reservation_failed();
                }
            }
        });
    }
}

fn store_error<T>(sent: Result<Result<T, PersistError>, MailboxError>) -> Result<T, StoreError> {
    match sent {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(StoreError::Io {
            path: err.path,
            message: err.message,
        }),
        Err(err) => Err(StoreError::NotAnswering(err.to_string())),
    }
}

impl Store for FileStore {
    fn submit(&mut self, draft: Draft) -> Submitted {
        let id = self.ids.borrow_mut().take();
        self.reserve_if_due();
        let Some(id) = id else {
            return Submitted::Refused(StoreError::NoIds);
        };
        let conversation = draft.target.conversation();
        let (room, to) = match draft.target {
            Target::Room { name, .. } => (Some(name), None),
            Target::Direct { to, .. } => (None, Some(to)),
        };
        let message = ChatMessage {
            id,
            room,
            to,
            from: draft.from,
            text: draft.text,
            ts: crate::server::unix_ms(),
        };
        match Delivery::new(message) {
            Ok(delivery) => {
                self.persistence.do_send(AppendHistory {
                    payload: payload_of(&delivery.frame),
                    id,
                    conversation,
                });
                Submitted::Delivered(delivery)
            }
            Err(err) => Submitted::Refused(StoreError::Io {
                path: "a message".into(),
                message: format!("could not be serialised: {err}"),
            }),
        }
    }

    fn record_identities(
        &mut self,
        changes: Vec<IdentityChange>,
        durable: bool,
    ) -> Option<StoreFuture<()>> {
        if !durable {
            if !changes.is_empty() {
                self.gather(changes);
            }
            return None;
        }
        let mut all = self.take_gathered();
        all.extend(changes);
        let sent = self.persistence.send(RecordIdentities {
            changes: all,
            durable,
        });
        Some(Box::pin(async move { store_error(sent.await) }))
    }

    fn create_account(&mut self, account: Account) -> StoreFuture<bool> {
        let key = crate::names::name_key(&account.name);
        // What was gathered goes first: a token of an account deleted a moment ago must
        // not land after an account of the same name created now.
        let mut changes = self.take_gathered();
        changes.push(IdentityChange::AddAccount { account });
        let sent = self.persistence.send(RecordIdentities {
            changes,
            durable: true,
        });
        let persistence = self.persistence.clone();
        Box::pin(async move {
            let saved = store_error(sent.await);
            if saved.is_err() {
                // Undone, so that the name can be tried again.
                persistence.do_send(RecordIdentities {
                    changes: vec![IdentityChange::RemoveAccount { key }],
                    durable: false,
                });
            }
            saved.map(|()| true)
        })
    }

    fn spend_token(&mut self, digest: &str, known: Option<&str>) -> Answer<Option<Spent>> {
        let spent = known.map(|user| {
            // Written with the next batch: a crash may bring back a token spent in its
            // last second, as the contract allows for tokens.
            self.gather(vec![IdentityChange::RevokeToken {
                digest: digest.to_string(),
            }]);
            Spent {
                user: user.to_string(),
                account: None,
            }
        });
        Answer::Now(spent)
    }

    fn lookup_account(&mut self, _key: &str) -> Answer<Option<Account>> {
        // The view has every account there is.
        Answer::Now(None)
    }

    fn delete_account(&mut self, deletion: AccountDeletion) -> StoreFuture<()> {
        let AccountDeletion {
            key,
            account,
            rooms,
            ..
        } = deletion;
        let mut changes = self.take_gathered();
        changes.push(IdentityChange::RemoveAccount { key: key.clone() });
        let identities = self.persistence.send(RecordIdentities {
            changes,
            durable: true,
        });
        let memberships = self
            .persistence
            .send(RecordRooms(vec![RoomChange::RemoveUser {
                user: key.clone(),
            }]));
        let persistence = self.persistence.clone();
        Box::pin(async move {
            let saved = store_error(identities.await).and(store_error(memberships.await));
            if saved.is_err() {
                // Undone, so that what the user is told holds.
                persistence.do_send(RecordIdentities {
                    changes: vec![IdentityChange::AddAccount { account }],
                    durable: false,
                });
                let rejoin = rooms
                    .into_iter()
                    .map(|room| RoomChange::Join {
                        room,
                        user: key.clone(),
                    })
                    .collect();
                persistence.do_send(RecordRooms(rejoin));
            }
            saved
        })
    }

    fn join_room(&mut self, join: RoomJoin) -> StoreFuture<Joined> {
        let mut changes = Vec::new();
        if join.create {
            changes.push(RoomChange::Create {
                name: join.name,
                created_ms: crate::server::unix_ms(),
            });
        }
        changes.push(RoomChange::Join {
            room: join.key.clone(),
            user: join.user.clone(),
        });
        let sent = self.persistence.send(RecordRooms(changes.clone()));
        let persistence = self.persistence.clone();
        Box::pin(async move {
            match store_error(sent.await) {
                Ok(()) => Ok(Joined {
                    changes,
                    newly: true,
                }),
                Err(err) => {
                    persistence.do_send(RecordRooms(vec![RoomChange::Part {
                        room: join.key,
                        user: join.user,
                    }]));
                    Err(err)
                }
            }
        })
    }

    fn part_room(&mut self, room: &str, user: &str) -> StoreFuture<bool> {
        let sent = self.persistence.send(RecordRooms(vec![RoomChange::Part {
            room: room.to_string(),
            user: user.to_string(),
        }]));
        Box::pin(async move { store_error(sent.await).map(|()| true) })
    }

    fn record_rooms(&mut self, changes: Vec<RoomChange>) -> StoreFuture<()> {
        let sent = self.persistence.send(RecordRooms(changes));
        Box::pin(async move { store_error(sent.await) })
    }

    fn page(&mut self, request: PageRequest) -> StoreFuture<Vec<Bytes>> {
        let sent = self.persistence.send(ReadPage(request));
        Box::pin(async move { store_error(sent.await) })
    }

    fn last_id(&self) -> u64 {
        self.ids.borrow().last_id()
    }

    fn user_connected(&mut self, _key: &str, _name: &str) -> bool {
        // This server's connections are all there are.
        true
    }

    fn user_disconnected(&mut self, _key: &str) -> bool {
        true
    }

    fn online_elsewhere(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn nodes(&self) -> Vec<NodeSummary> {
        Vec::new()
    }

    fn broadcast_kick(&mut self, _key: &str, _message: &str, _except: Option<SessionId>) {}

    fn is_available(&self) -> bool {
        true
    }

    fn take_events(&mut self) -> Option<StoreEvents> {
        None
    }

    fn sync_for_shutdown(&mut self) -> StoreFuture<()> {
        let gathered = self.take_gathered();
        if !gathered.is_empty() {
            // The mailbox keeps one sender's messages in order: these go first.
            self.persistence.do_send(RecordIdentities {
                changes: gathered,
                durable: false,
            });
        }
        let sent = self.persistence.send(SyncForShutdown {
            last_id: self.last_id(),
        });
        Box::pin(async move { store_error(sent.await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_given_only_within_the_reservation() {
        let start = Instant::now();
        // Slowly: a minute between reservations keeps the smallest block.
        let at = |minutes: u64| move || start + Duration::from_secs(60 * minutes);
        let mut ids = IdAllocator::new(1, 0);
        assert_eq!(ids.take(), None, "nothing reserved yet");
        let through = ids.reservation_due(at(0)).unwrap();
        assert_eq!(through, 1 + ID_BLOCK);
        assert_eq!(ids.reservation_due(at(0)), None, "one on its way");
        ids.reserved(through);
        assert_eq!(ids.take(), Some(1));
        assert_eq!(ids.reservation_due(at(0)), None, "plenty left");
        while ids.last_id() < ID_BLOCK / 2 + 1 {
            ids.take().unwrap();
        }
        let next = ids.reservation_due(at(1)).unwrap();
        assert!(next > through);
        assert_eq!(
            next - ids.last_id() - 1,
            ID_BLOCK,
            "slow use keeps the block"
        );
        ids.reservation_failed();
        assert!(ids.reservation_due(at(2)).is_some(), "asked again");
        while ids.take().is_some() {}
        assert_eq!(ids.last_id(), through);
    }

    #[test]
    fn blocks_grow_with_the_rate_and_shrink_back() {
        let start = Instant::now();
        let at = |ms: u64| move || start + Duration::from_millis(ms);
        let mut ids = IdAllocator::new(1, 0);
        let through = ids.reservation_due(at(0)).unwrap();
        ids.reserved(through);
        // Half a block used in 100 ms: 50,000 ids a second.
        while ids.last_id() < ID_BLOCK / 2 + 1 {
            ids.take().unwrap();
        }
        let fast = ids.reservation_due(at(100)).unwrap();
        let block = fast - ids.last_id() - 1;
        assert!(
            (450_000..=550_000).contains(&block),
            "10 s of ids at 50,000/s: {block}"
        );
        ids.reserved(fast);
        // Faster still: capped.
        while ids.reserved_through - ids.next_id >= block / 2 {
            ids.take().unwrap();
        }
        let capped = ids.reservation_due(at(101)).unwrap();
        assert_eq!(capped - ids.last_id() - 1, MAX_ID_BLOCK);
        ids.reserved(capped);
        // Then slow again: back to the smallest block.
        while ids.reserved_through - ids.next_id >= MAX_ID_BLOCK / 2 {
            ids.take().unwrap();
        }
        let slow = ids.reservation_due(at(3_600_000)).unwrap();
        assert_eq!(slow - ids.last_id() - 1, ID_BLOCK);
    }
}
