//! Step three of a received event: the auth rules, against its auth events (fetched first when
//! missing), then against the state before it (its prev events fetched or bridged first), then,
//! for soft failure, against the room's current state. A rejected event is kept as an outlier
//! marked rejected, never state.

use ruma::{room_version_rules::RoomVersionRules, RoomId, ServerName};

use super::{Checked, Refused, Service};
use crate::{
    service::rooms::{
        remote::{REJECTED, SOFT_FAILED},
        state::StateMap,
    },
    storage::ShortId,
};

impl Service {
    /// Authorises `v` in `room`; returns the state before it and its flags (`SOFT_FAILED` when
    /// the current state refuses what its own history allows).
    pub(super) async fn authorise(
        &self,
        origin: &ServerName,
        room: ShortId,
        room_id: &RoomId,
        rules: &RoomVersionRules,
        v: &Checked,
        depth: u32,
    ) -> Result<(StateMap, u8), Refused> {
        // 1. Its auth events, then the auth rules against them.
        self.fetch_auth_chain(origin, room_id, rules, &v.pdu.auth_events)
            .await?;
        if let Err(e) = self.rooms.authorise_by_auth_events(rules, &v.pdu) {
            return Err(self.reject(v, e).await);
        }
        // 2. Its prev events, then the state before it.
        let state_before = self.state_before(origin, room, rules, v, depth).await?;
        if let Err(e) = self.rooms.authorise_against(rules, &v.pdu, &state_before) {
            return Err(self.reject(v, e).await);
        }
        // 3. Soft failure: allowed by its own history but not by the room as it is now.
        let current = self.rooms.state.current_state_map(room)?;
        let flags = match self.rooms.authorise_against(rules, &v.pdu, &current) {
            Ok(()) => 0,
            Err(e) => {
                tracing::info!(event_id = %v.event_id, "soft-failed: {e}");
                SOFT_FAILED
            }
        };
        Ok((state_before, flags))
    }

    /// Keeps a refused event as a rejected outlier (so it is refused again without work).
    async fn reject(&self, v: &Checked, why: impl std::fmt::Display) -> Refused {
        let kept = self
            .rooms
            .store_outliers(vec![(v.event_id.clone(), v.object.clone(), REJECTED)])
            .await;
        match kept {
            Ok(()) => Refused::Rejected(why.to_string()),
            Err(e) => e.into(),
        }
    }
}
