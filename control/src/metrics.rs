//! The metrics API's time series (`GET /hubs/{id}/metrics`, `GET /devices/{id}/metrics`),
//! kept in bounded rings.
//!
//! As in the reference, every MQTT packet in either direction is one message. A hub has two
//! series, `messages` and `active_devices` (devices that exchanged at least one packet in
//! the interval); a device has `messages` and `activity` (1 for an interval in which it
//! exchanged a packet, else 0). Each series exists at five resolutions, one per period the
//! API offers: an hour by minute (60 points), a day by hour (24), a week by 4 hours (42,
//! aligned on 00:00 UTC), a month by day (30) and a year by calendar month (12), all in
//! UTC. A query names a `period`, or a `start_date` from which the shortest period that
//! reaches back to it is chosen (and the points before it are left out); the answer's
//! points run from the oldest interval of the period to the current one, zeros included,
//! each stamped with the start of its interval.
//!
//! Memory is bounded: each hub and each device that was ever active has one ring of fixed
//! size per resolution (168 slots in all), and a hub keeps, for the interval in progress at
//! each resolution, the set of its devices already counted as active. Rings are fed by the
//! binary from the engine's counts ([`MetricRings::record`]) and saved in the registry
//! database (`metric_rings`, migration 0003) when they changed ([`MetricRings::take_dirty`])
//! and at shutdown, then loaded at start ([`MetricRings::restore`]): the series survive a
//! restart, the interval in progress included (its set of active devices is rebuilt from
//! the devices' rings). Deleting a hub or a device deletes its rings.
//!
//! Nothing here knows the engine: the binary hands in plain counts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use iothub_model::{DeviceId, HubId};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Serialize, Serializer};

use crate::time::{Timestamp, civil_from_days, days_from_civil};

/// How long one point of a series covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    Minute,
    Hour,
    FourHours,
    Day,
    Month,
}

impl Resolution {
    pub const ALL: [Self; 5] = [
        Self::Minute,
        Self::Hour,
        Self::FourHours,
        Self::Day,
        Self::Month,
    ];

    /// The intervals a ring keeps: the points of the period that uses this resolution.
    pub const fn slots(self) -> usize {
        match self {
            Self::Minute => 60,
            Self::Hour => 24,
            Self::FourHours => 42,
            Self::Day => 30,
            Self::Month => 12,
        }
    }

    /// The name stored in the database and shown in a series' metadata.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::FourHours => "4h",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    const fn position(self) -> usize {
        match self {
            Self::Minute => 0,
            Self::Hour => 1,
            Self::FourHours => 2,
            Self::Day => 3,
            Self::Month => 4,
        }
    }

    /// The number of the interval holding `t`, counted from the one holding the epoch.
    pub fn index_of(self, t: Timestamp) -> i64 {
        let secs = t.as_secs();
        match self {
            Self::Minute => secs.div_euclid(60),
            Self::Hour => secs.div_euclid(3_600),
            Self::FourHours => secs.div_euclid(4 * 3_600),
            Self::Day => secs.div_euclid(86_400),
            Self::Month => {
                let (year, month, _) = civil_from_days(secs.div_euclid(86_400));
                (year - 1970) * 12 + i64::from(month) - 1
            }
        }
    }

    /// When interval `index` starts.
    pub fn start_of(self, index: i64) -> Timestamp {
        match self {
            Self::Minute => Timestamp::from_secs(index.saturating_mul(60)),
            Self::Hour => Timestamp::from_secs(index.saturating_mul(3_600)),
            Self::FourHours => Timestamp::from_secs(index.saturating_mul(4 * 3_600)),
            Self::Day => Timestamp::from_secs(index.saturating_mul(86_400)),
            Self::Month => {
                let year = 1970 + index.div_euclid(12);
                // rem_euclid(12) is in [0, 11].
                let month = index.rem_euclid(12) as u32 + 1;
                Timestamp::from_secs(days_from_civil(year, month, 1).saturating_mul(86_400))
            }
        }
    }
}

impl FromStr for Resolution {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|r| r.as_str() == s).ok_or(())
    }
}

/// The span a query covers: `?period=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    pub const ALL: [Self; 5] = [Self::Hour, Self::Day, Self::Week, Self::Month, Self::Year];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    /// Its points: an hour by minute, a day by hour, a week by 4 hours, a month by day, a
    /// year by month.
    pub const fn resolution(self) -> Resolution {
        match self {
            Self::Hour => Resolution::Minute,
            Self::Day => Resolution::Hour,
            Self::Week => Resolution::FourHours,
            Self::Month => Resolution::Day,
            Self::Year => Resolution::Month,
        }
    }

    /// The shortest period whose span (an hour, a day, a week, 30 days, 365 days) reaches
    /// back `span_secs` from now; a year beyond.
    pub fn covering(span_secs: i64) -> Self {
        Self::ALL
            .into_iter()
            .find(|p| span_secs <= p.span_secs())
            .unwrap_or(Self::Year)
    }

    const fn span_secs(self) -> i64 {
        match self {
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Week => 7 * 86_400,
            Self::Month => 30 * 86_400,
            Self::Year => 365 * 86_400,
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a `period` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a period: expected hour, day, week, month or year")]
pub struct InvalidPeriod;

impl FromStr for Period {
    type Err = InvalidPeriod;
    fn from_str(s: &str) -> Result<Self, InvalidPeriod> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or(InvalidPeriod)
    }
}

/// The intervals a query answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesRange {
    pub period: Period,
    pub resolution: Resolution,
    /// Oldest and newest (current) interval, inclusive.
    pub first: i64,
    pub last: i64,
}

/// Why a query's range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("start_date is in the future")]
    StartInFuture,
}

impl SeriesRange {
    /// `period` when given, else the shortest one reaching back to `start`, else an hour;
    /// the points start at the period's oldest interval, or at `start`'s when later.
    pub fn new(
        period: Option<Period>,
        start: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Self, RangeError> {
        if start.is_some_and(|s| s > now) {
            return Err(RangeError::StartInFuture);
        }
        let period = period
            .or_else(|| start.map(|s| Period::covering(now.as_secs() - s.as_secs())))
            .unwrap_or(Period::Hour);
        let resolution = period.resolution();
        let last = resolution.index_of(now);
        let oldest = last - (resolution.slots() as i64 - 1);
        let first = start.map_or(oldest, |s| resolution.index_of(s).max(oldest));
        Ok(Self {
            period,
            resolution,
            first,
            last,
        })
    }
}

/// `{"metrics": [...]}`: the answer of both metrics endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsResponse {
    pub metrics: Vec<TimeSeries>,
}

/// One series: `{"name", "points": [[time, value], ...], "metadata": {...}}`, the
/// reference's shape (the time is RFC 3339, the start of the interval).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeSeries {
    pub name: &'static str,
    pub points: Vec<Point>,
    /// `period` and `resolution` of the points.
    pub metadata: BTreeMap<&'static str, &'static str>,
}

/// `[time, value]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub time: Timestamp,
    pub value: u64,
}

impl Serialize for Point {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&self.time)?;
        t.serialize_element(&self.value)?;
        t.end()
    }
}

/// What a ring holds for one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    index: i64,
    messages: u64,
    /// A hub's active devices (unused in a device's rings).
    active: u64,
}

const EMPTY: Slot = Slot {
    index: i64::MIN,
    messages: 0,
    active: 0,
};

/// The last `resolution.slots()` intervals: interval `i` lives in slot `i mod len`.
#[derive(Debug, Clone)]
struct Ring {
    slots: Box<[Slot]>,
}

impl Ring {
    fn new(resolution: Resolution) -> Self {
        Self {
            slots: vec![EMPTY; resolution.slots()].into_boxed_slice(),
        }
    }

    fn position(&self, index: i64) -> usize {
        // rem_euclid by the (small, positive) length is in [0, len).
        index.rem_euclid(self.slots.len() as i64) as usize
    }

    /// The slot of interval `index`, emptied when it held an older interval; `None` when
    /// it already holds a newer one (a count that arrives after its interval left the ring).
    fn slot_mut(&mut self, index: i64) -> Option<&mut Slot> {
        let at = self.position(index);
        let slot = &mut self.slots[at];
        if slot.index > index {
            return None;
        }
        if slot.index < index {
            *slot = Slot {
                index,
                messages: 0,
                active: 0,
            };
        }
        Some(slot)
    }

    fn get(&self, index: i64) -> Slot {
        let slot = self.slots[self.position(index)];
        if slot.index == index { slot } else { EMPTY }
    }

    /// The intervals held, oldest first.
    fn buckets(&self) -> Vec<MetricBucket> {
        let mut held: Vec<MetricBucket> = self
            .slots
            .iter()
            .filter(|s| s.index != i64::MIN)
            .map(|s| MetricBucket(s.index, s.messages, s.active))
            .collect();
        held.sort_unstable_by_key(|b| b.0);
        held
    }
}

fn rings() -> [Ring; 5] {
    Resolution::ALL.map(Ring::new)
}

/// The devices already counted as active in a hub's interval in progress.
#[derive(Debug, Clone, Default)]
struct ActiveSet {
    index: i64,
    devices: HashSet<DeviceId>,
}

#[derive(Debug, Clone)]
struct HubEntry {
    rings: [Ring; 5],
    active: [ActiveSet; 5],
}

impl HubEntry {
    fn new() -> Self {
        Self {
            rings: rings(),
            active: Default::default(),
        }
    }
}

#[derive(Debug, Clone)]
struct DeviceEntry {
    /// The hub of its latest activity (a device may move).
    hub: HubId,
    rings: [Ring; 5],
}

/// Whose ring a stored row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricObject {
    Hub(HubId),
    Device(DeviceId),
}

impl MetricObject {
    /// The `object_type` column.
    pub const fn kind(self) -> &'static str {
        match self {
            Self::Hub(_) => "hub",
            Self::Device(_) => "device",
        }
    }

    /// The `object_id` column.
    pub fn id(self) -> String {
        match self {
            Self::Hub(id) => id.to_string(),
            Self::Device(id) => id.to_string(),
        }
    }

    /// From the two columns; `None` when they do not name a hub or a device.
    pub fn parse(kind: &str, id: &str) -> Option<Self> {
        match kind {
            "hub" => id.parse().ok().map(Self::Hub),
            "device" => id.parse().ok().map(Self::Device),
            _ => None,
        }
    }
}

/// One interval as stored: `[index, messages, active_devices]` (compact JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricBucket(pub i64, pub u64, pub u64);

/// One ring as the store keeps it (a row of `metric_rings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricRingRecord {
    pub object: MetricObject,
    /// The hub itself, or the device's hub at its latest activity.
    pub hub_id: HubId,
    pub resolution: Resolution,
    /// The intervals held, oldest first.
    pub buckets: Vec<MetricBucket>,
    pub updated_at: Timestamp,
}

#[derive(Debug, Default)]
struct Inner {
    hubs: HashMap<HubId, HubEntry>,
    devices: HashMap<DeviceId, DeviceEntry>,
    dirty: HashSet<MetricObject>,
}

/// Every hub's and device's rings. Cheap to share behind an `Arc`; one short lock per
/// call.
#[derive(Debug, Default)]
pub struct MetricRings {
    inner: Mutex<Inner>,
}

impl MetricRings {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere mid-update: the counts are still
        // counts.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds what a hub's connections exchanged up to `at`: `messages` packets in all, and
    /// per device (each device once).
    pub fn record(&self, at: Timestamp, hub: HubId, messages: u64, devices: &[(DeviceId, u64)]) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let entry = inner.hubs.entry(hub).or_insert_with(HubEntry::new);
        for resolution in Resolution::ALL {
            let p = resolution.position();
            let index = resolution.index_of(at);
            let set = &mut entry.active[p];
            if set.index < index {
                set.index = index;
                set.devices.clear();
            }
            let newly_active = if set.index == index {
                devices
                    .iter()
                    .filter(|(d, n)| *n > 0 && set.devices.insert(*d))
                    .count() as u64
            } else {
                0
            };
            if let Some(slot) = entry.rings[p].slot_mut(index) {
                slot.messages += messages;
                slot.active += newly_active;
            }
        }
        inner.dirty.insert(MetricObject::Hub(hub));
        for &(device, n) in devices.iter().filter(|(_, n)| *n > 0) {
            let entry = inner.devices.entry(device).or_insert_with(|| DeviceEntry {
                hub,
                rings: rings(),
            });
            entry.hub = hub;
            for resolution in Resolution::ALL {
                let index = resolution.index_of(at);
                if let Some(slot) = entry.rings[resolution.position()].slot_mut(index) {
                    slot.messages += n;
                }
            }
            inner.dirty.insert(MetricObject::Device(device));
        }
    }

    /// A hub's `messages` and `active_devices` over `range` (zeros for a hub never seen).
    pub fn hub_series(&self, hub: HubId, range: &SeriesRange) -> MetricsResponse {
        let inner = self.lock();
        let ring = inner
            .hubs
            .get(&hub)
            .map(|e| &e.rings[range.resolution.position()]);
        let get = |i| ring.map_or(EMPTY, |r| r.get(i));
        MetricsResponse {
            metrics: vec![
                series("messages", range, |i| get(i).messages),
                series("active_devices", range, |i| get(i).active),
            ],
        }
    }

    /// A device's `messages` and `activity` over `range` (zeros for a device never seen).
    pub fn device_series(&self, device: DeviceId, range: &SeriesRange) -> MetricsResponse {
        let inner = self.lock();
        let ring = inner
            .devices
            .get(&device)
            .map(|e| &e.rings[range.resolution.position()]);
        let get = |i| ring.map_or(EMPTY, |r| r.get(i));
        MetricsResponse {
            metrics: vec![
                series("messages", range, |i| get(i).messages),
                series("activity", range, |i| u64::from(get(i).messages > 0)),
            ],
        }
    }

    /// Drops a deleted hub's rings and those of the devices last active in it.
    pub fn forget_hub(&self, hub: HubId) {
        let mut inner = self.lock();
        inner.hubs.remove(&hub);
        inner.devices.retain(|_, d| d.hub != hub);
        inner.dirty.retain(|o| match o {
            MetricObject::Hub(h) => *h != hub,
            MetricObject::Device(_) => true,
        });
    }

    /// Drops a deleted device's rings.
    pub fn forget_device(&self, device: DeviceId) {
        let mut inner = self.lock();
        inner.devices.remove(&device);
        inner.dirty.remove(&MetricObject::Device(device));
    }

    /// The rings that changed since the previous call, as rows to save (all resolutions of
    /// each). Give them back with [`MetricRings::mark_dirty`] when saving fails.
    pub fn take_dirty(&self, now: Timestamp) -> Vec<MetricRingRecord> {
        let mut inner = self.lock();
        let dirty = std::mem::take(&mut inner.dirty);
        let mut records = Vec::with_capacity(dirty.len() * Resolution::ALL.len());
        for object in dirty {
            let (hub_id, rings) = match object {
                MetricObject::Hub(id) => match inner.hubs.get(&id) {
                    Some(e) => (id, &e.rings),
                    None => continue,
                },
                MetricObject::Device(id) => match inner.devices.get(&id) {
                    Some(e) => (e.hub, &e.rings),
                    None => continue,
                },
            };
            for resolution in Resolution::ALL {
                records.push(MetricRingRecord {
                    object,
                    hub_id,
                    resolution,
                    buckets: rings[resolution.position()].buckets(),
                    updated_at: now,
                });
            }
        }
        records
    }

    /// Marks the objects of rows that could not be saved as changed again.
    pub fn mark_dirty(&self, records: &[MetricRingRecord]) {
        let mut inner = self.lock();
        for r in records {
            let exists = match r.object {
                MetricObject::Hub(id) => inner.hubs.contains_key(&id),
                MetricObject::Device(id) => inner.devices.contains_key(&id),
            };
            if exists {
                inner.dirty.insert(r.object);
            }
        }
    }

    /// Loads saved rows (at start, before any `record`), and rebuilds each hub's set of
    /// devices already active in the interval in progress at `now` from the devices' rings.
    pub fn restore(&self, records: &[MetricRingRecord], now: Timestamp) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for r in records {
            let ring = match r.object {
                MetricObject::Hub(id) => {
                    &mut inner.hubs.entry(id).or_insert_with(HubEntry::new).rings
                }
                MetricObject::Device(id) => {
                    &mut inner
                        .devices
                        .entry(id)
                        .or_insert_with(|| DeviceEntry {
                            hub: r.hub_id,
                            rings: rings(),
                        })
                        .rings
                }
            };
            let ring = &mut ring[r.resolution.position()];
            for &MetricBucket(index, messages, active) in &r.buckets {
                if let Some(slot) = ring.slot_mut(index) {
                    *slot = Slot {
                        index,
                        messages,
                        active,
                    };
                }
            }
        }
        for (id, device) in &inner.devices {
            let hub = inner.hubs.entry(device.hub).or_insert_with(HubEntry::new);
            for resolution in Resolution::ALL {
                let p = resolution.position();
                let index = resolution.index_of(now);
                if device.rings[p].get(index).messages == 0 {
                    continue;
                }
                let set = &mut hub.active[p];
                if set.index != index {
                    set.index = index;
                    set.devices.clear();
                }
                set.devices.insert(*id);
            }
        }
    }
}

fn series(name: &'static str, range: &SeriesRange, value: impl Fn(i64) -> u64) -> TimeSeries {
    let points = (range.first..=range.last)
        .map(|i| Point {
            time: range.resolution.start_of(i),
            value: value(i),
        })
        .collect();
    TimeSeries {
        name,
        points,
        metadata: BTreeMap::from([
            ("period", range.period.as_str()),
            ("resolution", range.resolution.as_str()),
        ]),
    }
}

#[cfg(test)]
mod tests;
