//! DynamoDB write units of a write call, from the items its request carries: what on-demand capacity would charge for it.
//!
//! DynamoDB charges a write one unit per started KB of the item — the larger of its size
//! before and after — and twice that inside a transaction. A request shows only what it
//! writes: a PutItem's (or a batch's, or a transaction's) whole item, so those are exact
//! when the item grows or stays; an UpdateItem or a transaction's Update sends only its key
//! and values, so it is counted from those, a lower bound; a delete is one unit (the item
//! it removes is not in the request), a condition check none (it is billed as a read).
//! Item sizes follow DynamoDB's rules: each attribute's name plus its value (a string's
//! UTF-8 bytes, a number's about one byte per two digits plus one, a binary's bytes, 1 for
//! a boolean or null, 3 plus each element's size and one byte for a list or map).

use serde_json::Value;

/// Bytes in a write unit.
const UNIT_BYTES: usize = 1024;

/// Write units of a DynamoDB call, from its operation and its JSON request body; 0 for
/// a call that writes nothing.
pub fn of_call(operation: &str, body: &[u8]) -> u64 {
    let Ok(request) = serde_json::from_slice::<Value>(body) else { return 0 };
    match operation {
        "PutItem" => units(item_size(&request["Item"])),
        "UpdateItem" => units(item_size(&request["Key"]) + values_size(&request["ExpressionAttributeValues"])),
        "DeleteItem" => 1,
        "BatchWriteItem" => request["RequestItems"]
            .as_object()
            .into_iter()
            .flat_map(|tables| tables.values())
            .filter_map(Value::as_array)
            .flatten()
            .map(|write| match write.get("PutRequest") {
                Some(put) => units(item_size(&put["Item"])),
                None => 1,
            })
            .sum(),
        "TransactWriteItems" => request["TransactItems"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| {
                let one = if let Some(put) = entry.get("Put") {
                    units(item_size(&put["Item"]))
                } else if let Some(update) = entry.get("Update") {
                    units(item_size(&update["Key"]) + values_size(&update["ExpressionAttributeValues"]))
                } else if entry.get("Delete").is_some() {
                    1
                } else {
                    0
                };
                2 * one
            })
            .sum(),
        _ => 0,
    }
}

/// Units of an item of `bytes`: a started KB each, at least one.
fn units(bytes: usize) -> u64 {
    bytes.div_ceil(UNIT_BYTES).max(1) as u64
}

/// An item's size: its attributes' names and values.
pub(crate) fn item_size(item: &Value) -> usize {
    item.as_object().map_or(0, |attributes| attributes.iter().map(|(name, value)| name.len() + value_size(value)).sum())
}

/// The values an update sends, as if each were an attribute of the item (its name left out).
fn values_size(values: &Value) -> usize {
    values.as_object().map_or(0, |values| values.values().map(value_size).sum())
}

/// One typed value's size (`{"S": "…"}`, `{"N": "…"}`, `{"M": {…}}`, …).
fn value_size(value: &Value) -> usize {
    let Some((kind, inner)) = value.as_object().and_then(|typed| typed.iter().next()) else { return 0 };
    match (kind.as_str(), inner) {
        ("S", Value::String(text)) => text.len(),
        ("N", Value::String(number)) => number_size(number),
        // Base64 in the request: three bytes per four characters.
        ("B", Value::String(encoded)) => encoded.len() * 3 / 4,
        ("BOOL" | "NULL", _) => 1,
        ("SS", Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::len).sum(),
        ("NS", Value::Array(items)) => items.iter().filter_map(Value::as_str).map(number_size).sum(),
        ("BS", Value::Array(items)) => items.iter().filter_map(Value::as_str).map(|b| b.len() * 3 / 4).sum(),
        ("L", Value::Array(items)) => 3 + items.iter().map(|item| 1 + value_size(item)).sum::<usize>(),
        ("M", Value::Object(map)) => {
            3 + map.iter().map(|(name, item)| 1 + name.len() + value_size(item)).sum::<usize>()
        }
        _ => 0,
    }
}

/// A number's size: a byte per two significant digits, plus one.
fn number_size(number: &str) -> usize {
    let digits = number.chars().filter(char::is_ascii_digit).collect::<String>();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len().max(1);
    significant.div_ceil(2) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_small_put_is_one_unit_and_a_large_one_a_unit_per_started_kb() {
        let small = json!({"TableName": "t", "Item": {"pk": {"S": "EVENT#1"}, "n": {"N": "12345"}}});
        assert_eq!(of_call("PutItem", small.to_string().as_bytes()), 1);
        let document = "x".repeat(2_500);
        let large = json!({"TableName": "t", "Item": {"pk": {"S": "RUN#1"}, "document": {"S": document}}});
        assert_eq!(of_call("PutItem", large.to_string().as_bytes()), 3);
    }

    #[test]
    fn a_transaction_costs_twice_its_writes_and_a_batch_each_of_its_items() {
        let put = json!({"Put": {"TableName": "t", "Item": {"pk": {"S": "a"}}}});
        let check = json!({"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "b"}}}});
        let transaction = json!({"TransactItems": [put, put, check]});
        assert_eq!(of_call("TransactWriteItems", transaction.to_string().as_bytes()), 4);
        let batch = json!({"RequestItems": {"t": [
            {"PutRequest": {"Item": {"pk": {"S": "a"}}}},
            {"PutRequest": {"Item": {"pk": {"S": "y".repeat(1_100)}}}},
            {"DeleteRequest": {"Key": {"pk": {"S": "c"}}}}
        ]}});
        assert_eq!(of_call("BatchWriteItem", batch.to_string().as_bytes()), 4);
    }

    #[test]
    fn an_update_counts_what_it_sends_and_a_read_nothing() {
        let update = json!({"Key": {"pk": {"S": "a"}}, "ExpressionAttributeValues": {":v": {"S": "z".repeat(1_500)}}});
        assert_eq!(of_call("UpdateItem", update.to_string().as_bytes()), 2);
        assert_eq!(of_call("GetItem", b"{\"Key\": {}}"), 0);
        assert_eq!(of_call("PutItem", b"not json"), 0);
    }

    #[test]
    fn sizes_follow_dynamodbs_rules_for_numbers_lists_and_maps() {
        assert_eq!(number_size("12345"), 4);
        assert_eq!(number_size("1000"), 2);
        assert_eq!(value_size(&json!({"L": [{"S": "ab"}, {"BOOL": true}]})), 3 + 3 + 2);
        assert_eq!(value_size(&json!({"M": {"k": {"S": "abc"}}})), 3 + 1 + 1 + 3);
    }
}
