//! English. Plain words for people who are not developers: no "grantd", "state", "token".

use super::{Message, Texts};

pub(super) const EN: Texts = Texts {
    lang: "en",
    app_fallback: "the app that sent you here",
    continue_title: "Connect your {provider} account",
    continue_lead: "You are connecting your {provider} account to {app}.",
    continue_account: "Account: {account}",
    continue_permissions: "This lets {app}:",
    continue_next: "Next, {provider} asks you to sign in and to allow access. Then you come back here.",
    continue_button: "Continue to {provider}",
    continue_expires: "This link works once, until {time}.",
    connected: Message {
        title: "Connected",
        body: "Your {provider} account is now connected to {app}. You can close this window.",
    },
    link_invalid: Message {
        title: "This link does not work",
        body: "It is incomplete or was changed. Ask {app} for a new link.",
    },
    link_expired: Message {
        title: "This link has expired",
        body: "Links work for a limited time, for your safety. Ask {app} for a new link.",
    },
    link_used: Message {
        title: "This link was already used",
        body: "Each link works only once. If your account is not connected yet, ask {app} for a new link.",
    },
    signin_unknown: Message {
        title: "This sign-in cannot be finished",
        body: "It did not start here, or its address was changed. Go back to {app} and start again.",
    },
    signin_used: Message {
        title: "This sign-in is already finished",
        body: "Each sign-in can be finished only once. If your account is not connected, go back to {app} and start again.",
    },
    signin_expired: Message {
        title: "This sign-in took too long",
        body: "For your safety, a sign-in must be finished within a few minutes. Go back to {app} and start again.",
    },
    other_browser: Message {
        title: "Please use the same browser",
        body: "This sign-in was started in another browser, so it cannot be finished here. Open the link from {app} again, in this browser.",
    },
    declined: Message {
        title: "Not connected",
        body: "Access to your {provider} account was not allowed, so nothing changed. If you meant to connect it, go back to {app} and try again.",
    },
    failed: Message {
        title: "Your account could not be connected",
        body: "Something went wrong while finishing the connection, and nothing changed. Go back to {app} and try again.",
    },
    unavailable: Message {
        title: "Please try again in a moment",
        body: "This service is briefly unavailable. Nothing changed. Reload this page in a minute.",
    },
    not_found: Message {
        title: "Page not found",
        body: "There is nothing at this address. Check the link you were sent, or ask {app} for a new one.",
    },
    help: "Need help? Contact",
};
