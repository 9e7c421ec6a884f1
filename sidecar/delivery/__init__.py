"""Delivery: a lane per API (`lane.Lane`) taking events from the journal, paced
by a limiter (in memory or shared through Redis), a breaker and backoff."""
