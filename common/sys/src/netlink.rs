//! What rtnetlink's errors mean, and the link lookups every user needs.
//! "Already gone" has one meaning everywhere: a delete or lookup of a link,
//! route, address or neighbour that does not exist succeeds at its goal.

use futures::TryStreamExt as _;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::Handle;

/// The errno of a netlink error answer, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

/// `ENOENT`, `ENODEV`, `ESRCH`: the object is not there (never was, or
/// went with its device or namespace).
pub fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(libc::ENOENT | libc::ENODEV | libc::ESRCH))
}

/// `EEXIST`: what is being created is there already.
pub fn is_exists(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(libc::EEXIST)
}

/// The link called `name`, or `None` if there is none.
pub async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes the link `name` if it exists; returns whether this call deleted
/// it. Gone between lookup and delete (a concurrent delete, or its
/// namespace going away with it) is not an error: the goal holds.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, rtnetlink::Error> {
    let Some(link) = link_by_name(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_gone(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The link's MAC address, if it has one.
pub fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
        _ => None,
    })
}
