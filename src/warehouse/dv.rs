//! Deletion vectors: the Delta Lake way to take rows out of a data file without rewriting
//! it. A commit that replaces objects writes one `deletion_vector_<uuid>.bin` file holding
//! a bitmap of deleted row positions for every data file it touches, and re-adds those data
//! files with a descriptor pointing into it. Readers (Spark, Databricks, DuckDB's delta
//! extension, delta-rs) skip the marked rows.
//!
//! Format (Delta protocol, "Deletion Vector Format"): one version byte (1), then per vector
//! its size (u32, big endian), the portable RoaringBitmapArray magic (u32, little endian),
//! the 64-bit roaring bitmap in its portable serialization, and a CRC-32 of magic + bitmap
//! (u32, big endian). The size counts magic + bitmap.

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use deltalake::kernel::{DeletionVectorDescriptor, StorageType};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use roaring::RoaringTreemap;

/// The magic number of a portable RoaringBitmapArray.
const MAGIC: u32 = 1_681_511_377;

/// Deletion vectors being gathered for one commit, written as one file.
pub struct DvFile {
    uuid: uuid::Uuid,
    bytes: Vec<u8>,
}

impl Default for DvFile {
    fn default() -> Self {
        Self::new()
    }
}

impl DvFile {
    /// An empty file with a fresh name.
    pub fn new() -> Self {
        DvFile {
            uuid: uuid::Uuid::new_v4(),
            bytes: vec![1],
        }
    }

    /// The file's size so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no vector was added.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() == 1
    }

    /// Appends `rows` and returns the descriptor a data file's `add` carries for it.
    pub fn push(&mut self, rows: &RoaringTreemap) -> Result<DeletionVectorDescriptor> {
        let offset = self.bytes.len();
        let mut data = Vec::with_capacity(4 + rows.serialized_size());
        data.extend_from_slice(&MAGIC.to_le_bytes());
        rows.serialize_into(&mut data)
            .context("serializing a deletion vector")?;
        let size = u32::try_from(data.len()).context("a deletion vector over 4 GiB")?;
        self.bytes.extend_from_slice(&size.to_be_bytes());
        self.bytes.extend_from_slice(&data);
        self.bytes
            .extend_from_slice(&crc32fast::hash(&data).to_be_bytes());
        Ok(DeletionVectorDescriptor {
            storage_type: StorageType::UuidRelativePath,
            path_or_inline_dv: z85::encode(self.uuid.as_bytes()),
            offset: Some(i32::try_from(offset).context("a deletion vector file over 2 GiB")?),
            size_in_bytes: size as i32,
            cardinality: rows.len() as i64,
        })
    }

    /// The file's path relative to the table root.
    pub fn path(&self) -> Path {
        Path::from(format!("deletion_vector_{}.bin", self.uuid))
    }

    /// Uploads the file into the table's store (relative to the table root). Written before
    /// the commit that references it, like data files.
    pub async fn upload(self, store: &dyn ObjectStore) -> Result<()> {
        let path = self.path();
        store
            .put(&path, PutPayload::from(self.bytes))
            .await
            .with_context(|| format!("uploading the deletion vector file {path}"))?;
        Ok(())
    }
}

/// The table-relative path of the file a descriptor points into.
fn descriptor_path(dv: &DeletionVectorDescriptor) -> Result<Path> {
    match dv.storage_type {
        StorageType::UuidRelativePath => {
            let encoded = &dv.path_or_inline_dv;
            ensure!(
                encoded.len() >= 20,
                "deletion vector path {encoded:?} is too short"
            );
            let (prefix, id) = encoded.split_at(encoded.len() - 20);
            let raw =
                z85::decode(id).map_err(|e| anyhow!("deletion vector path {encoded:?}: {e}"))?;
            let uuid = uuid::Uuid::from_slice(&raw)
                .map_err(|e| anyhow!("deletion vector path {encoded:?}: {e}"))?;
            Ok(if prefix.is_empty() {
                Path::from(format!("deletion_vector_{uuid}.bin"))
            } else {
                Path::from(format!("{prefix}/deletion_vector_{uuid}.bin"))
            })
        }
        StorageType::AbsolutePath => bail!(
            "deletion vectors at absolute paths ({}) are not supported",
            dv.path_or_inline_dv
        ),
        StorageType::Inline => bail!("inline deletion vectors are read by `parse_inline`"),
    }
}

/// Reads the rows a descriptor marks deleted, from the table's store.
pub async fn read(
    store: &dyn ObjectStore,
    dv: &DeletionVectorDescriptor,
) -> Result<RoaringTreemap> {
    if matches!(dv.storage_type, StorageType::Inline) {
        let raw = z85::decode(&dv.path_or_inline_dv)
            .map_err(|e| anyhow!("inline deletion vector: {e}"))?;
        return parse_vector(&raw, "an inline deletion vector");
    }
    let path = descriptor_path(dv)?;
    let bytes: Bytes = store
        .get(&path)
        .await
        .with_context(|| format!("reading the deletion vector file {path}"))?
        .bytes()
        .await
        .with_context(|| format!("reading the deletion vector file {path}"))?;
    let start =
        usize::try_from(dv.offset.unwrap_or(1)).context("negative deletion vector offset")?;
    let size = usize::try_from(dv.size_in_bytes).context("negative deletion vector size")?;
    let end = start + 4 + size + 4;
    ensure!(
        bytes.first() == Some(&1) && bytes.len() >= end,
        "the deletion vector file {path} is not a version-1 file of at least {end} bytes"
    );
    let stored = u32::from_be_bytes(bytes[start..start + 4].try_into()?) as usize;
    ensure!(
        stored == size,
        "the deletion vector in {path} at {start} has size {stored}, the log says {size}"
    );
    let data = &bytes[start + 4..start + 4 + size];
    let crc = u32::from_be_bytes(bytes[start + 4 + size..end].try_into()?);
    ensure!(
        crc == crc32fast::hash(data),
        "the deletion vector in {path} at {start} fails its checksum"
    );
    parse_vector(data, &format!("the deletion vector in {path}"))
}

fn parse_vector(data: &[u8], what: &str) -> Result<RoaringTreemap> {
    ensure!(data.len() >= 4, "{what} is truncated");
    let magic = u32::from_le_bytes(data[..4].try_into()?);
    ensure!(magic == MAGIC, "{what} has an unknown format ({magic})");
    RoaringTreemap::deserialize_from(&data[4..]).with_context(|| format!("decoding {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn vectors_read_back_from_one_file() {
        let store = InMemory::new();
        let mut file = DvFile::new();
        let a: RoaringTreemap = [0u64, 5, 9].into_iter().collect();
        let b: RoaringTreemap = (100u64..200).chain([5_000_000_000]).collect();
        let da = file.push(&a).unwrap();
        let db = file.push(&b).unwrap();
        assert_eq!(da.offset, Some(1));
        assert_eq!(da.cardinality, 3);
        assert_eq!(db.cardinality, 101);
        file.upload(&store).await.unwrap();
        assert_eq!(read(&store, &da).await.unwrap(), a);
        assert_eq!(read(&store, &db).await.unwrap(), b);
    }

    #[tokio::test]
    async fn a_corrupt_vector_is_an_error_not_a_wrong_answer() {
        let store = InMemory::new();
        let mut file = DvFile::new();
        let dv = file.push(&[1u64, 2].into_iter().collect()).unwrap();
        let path = file.path();
        let mut bytes = file.bytes.clone();
        let last = bytes.len() - 6;
        bytes[last] ^= 0xff;
        store.put(&path, PutPayload::from(bytes)).await.unwrap();
        let err = read(&store, &dv).await.unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }
}
