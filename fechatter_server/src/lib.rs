//! `fechatter_server`: the Fechatter chat API. For now it holds the analytics publisher that turns every user
//! action into an `AnalyticsEvent` on `fechatter.analytics.<type>` (see [`analytics`]).

pub mod analytics;
