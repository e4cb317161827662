//! Incoming federation transactions (`PUT /send/{txnId}`): a retried transaction is answered
//! from its recorded outcome; otherwise each PDU goes to replication (the one event pipeline) and
//! each EDU to the service it concerns ([`edu`]). Checks that need the request (its signer, its
//! size) stay in the handler; this module never answers a peer itself.

pub mod edu;

use std::collections::BTreeMap;

use ruma::{api::federation::transactions::edu::Edu, serde::Raw, OwnedEventId, ServerName};
use serde_json::{value::RawValue as RawJsonValue, Value as JsonValue};

use super::{replication::to_canonical, rooms::remote::Relay, Services};
use crate::{
    error::Result,
    storage::{tables, Batch, StorageError, Table},
};

/// A transaction's outcome as recorded: event ID → the reason it was refused, if it was.
type Outcome = BTreeMap<OwnedEventId, Option<String>>;

/// What became of each PDU of a transaction: accepted, or refused with the reason.
pub type PduResults = BTreeMap<OwnedEventId, std::result::Result<(), String>>;

/// Handles one transaction from `origin` (already authenticated as its signer).
pub async fn receive_transaction(
    services: &Services,
    origin: &ServerName,
    transaction_id: &str,
    pdus: &[Box<RawJsonValue>],
    edus: &[Raw<Edu>],
) -> Result<PduResults> {
    let txns = Table::<tables::FedTxns<Outcome>>::new(&services.db);
    let txn_key = (origin.as_str(), transaction_id);
    match txns.get(txn_key) {
        Ok(Some(done)) => {
            return Ok(done
                .into_iter()
                .map(|(k, v)| (k, v.map_or(Ok(()), Err)))
                .collect());
        }
        // An unreadable record is as good as none: the transaction is handled again.
        Ok(None) | Err(StorageError::Corrupt { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let mut results = PduResults::new();
    for raw in pdus {
        let object = match serde_json::from_str::<JsonValue>(raw.get())
            .map_err(|e| e.to_string())
            .and_then(|v| to_canonical(v).map_err(|e| e.to_string()))
        {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(%origin, "unreadable PDU in a transaction: {e}");
                continue;
            }
        };
        match services
            .replication
            .receive(origin, object, Relay::No)
            .await
        {
            Ok(id) => {
                results.insert(id, Ok(()));
            }
            Err((id, why)) => {
                tracing::info!(%origin, event_id = ?id, "PDU not accepted: {why}");
                if let Some(id) = id {
                    results.insert(id, Err(why.to_string()));
                }
            }
        }
    }
    for raw in edus {
        if let Err(e) = edu::receive(services, origin, raw).await {
            tracing::info!(%origin, "EDU not accepted: {e}");
        }
    }
    let record: Outcome = results
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().err().cloned()))
        .collect();
    let mut batch = Batch::new();
    txns.put_in(&mut batch, txn_key, &record);
    services.db.write(batch).await?;
    Ok(results)
}
