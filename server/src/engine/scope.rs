//! Where an existing reservation belongs, for authorization of calls that name only the
//! reservation (commit, cancel, spoiled blank): one indexed read on the read pool.

use super::{Engine, EngineResult};
use crate::store::rows;

impl Engine {
    /// The office and service point of a reservation, or None when there is no such reservation.
    pub async fn reservation_place(
        &self,
        reservation_id: &str,
    ) -> EngineResult<Option<(String, String)>> {
        let mut conn = self.store.reader().await?.acquire().await?;
        Ok(rows::reservation(&mut conn, reservation_id)
            .await?
            .map(|r| (r.office_id, r.service_point_id)))
    }
}
