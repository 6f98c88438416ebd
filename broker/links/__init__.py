"""Short-lived encrypted study links: issued on a policy decision, redeemed through the proxy."""
