//! The pure rules of blangko: no I/O, no system clock; time comes in as parameters.
//!
//! - [`nik`]: parsing, validating and masking the applicant's NIK (personal data).
//! - [`calendar`]: the office's local day (WIB/WITA/WIT) and which days a service point serves.
//! - [`quota`]: today's paced quota and the admission decision for one Reserve.
//! - [`reservation`]: the HELD → COMMITTED / CANCELLED / EXPIRED state machine and spoiled blanks.
//! - [`reason`]: why an applicant needs a card, in the ministry's priority order.
//! - [`referral`]: the IKD referral the applicant is told when no blank can be reserved.
//! - [`forecast`](mod@forecast): who in a counter's queue can still expect a blank, and days of stock cover.
//!
//! The store reads the inputs and writes the outcome in one transaction; these modules only
//! decide, so every rule is unit-tested without a database.

#![forbid(unsafe_code)]

pub mod calendar;
pub mod forecast;
pub mod nik;
pub mod quota;
pub mod reason;
pub mod referral;
pub mod reservation;

pub use calendar::{OfficeZone, ServiceCalendar};
pub use forecast::{days_of_cover, forecast};
pub use nik::{Nik, NikError};
pub use quota::{AdmissionInput, CapUse, Refusal, decide, remaining};
pub use reason::Reason;
pub use referral::{ReferralKind, ReferralText, referral_text};
pub use reservation::{
    CancelStep, CommitStep, MAX_SPOILED_PER_RESERVATION, State, TransitionError,
};
