// The exactly-once mode's tables: per batch, the source offsets whose effect the batch applied, written in
// the batch's own statement (read on assignment, pruned once Kafka commits them); and the owners table
// whose per-partition epoch fences the writes of an instance that lost the partition (a zombie).
namespace KFlow.Postgres

open System
open System.Threading.Tasks
open Npgsql
open NpgsqlTypes
open KFlow

/// <summary>The settings of the exactly-once mode (see UpsertConfig.ExactlyOnce).</summary>
/// <remarks>Each batch records the source offsets it applies in <c>OffsetsTable</c>, in the same statement
/// as its rows; the runtime resumes past and skips recorded offsets, so each message's effect is applied
/// once even across crashes, and tables without a unique key (Keys = []) can be appended to. Reading
/// them on assignment claims the partitions, and a batch whose claim is stale is fenced
/// (FencedWriteException), so a revoked instance's late write cannot apply its messages again.</remarks>
[<NoEquality; NoComparison>]
type ExactlyOnceOptions = {
    /// The workflow's consumer group (WorkflowOptions.GroupId). No default.
    GroupId: string
    /// The sink's own table of applied offsets (table or schema.table), created at start-up if missing,
    /// with its owners table (the same name + "_owners"), whose per-partition epochs fence the writes of
    /// an instance that lost the partition. Several sinks and groups may share them. Default
    /// "kflow_applied_offsets".
    OffsetsTable: string
}

/// Building exactly-once options.
[<RequireQualifiedAccess>]
module ExactlyOnceOptions =

    /// The default table of applied offsets.
    [<Literal>]
    let DefaultOffsetsTable = "kflow_applied_offsets"

    /// The options for a consumer group, with the default offsets table.
    let create (groupId: string) = {
        GroupId = groupId
        OffsetsTable = DefaultOffsetsTable
    }

/// The SQL of one offsets table and its owners table (quoted identifiers; values are always parameters).
type internal PgAppliedOffsets = {
    Table: PgIdentifier
    /// The owners table: the offsets table's name + "_owners", in the same schema.
    Owners: PgIdentifier
    GroupId: string
    /// The sink whose writes are fenced: its target table, schema-qualified as the catalog names it
    /// (set by ensure; fences of different tables are independent).
    Sink: string
    /// CREATE TABLE / INDEX IF NOT EXISTS.
    Create: string
    /// Claims partitions for a new owner: bumps their epochs, waiting for the old owner's batches in
    /// flight ($1 group, $2 sink, $3 topics, $4 partitions, $5 who); returns (topic, partition, epoch).
    Claim: string
    /// The owner rows of partitions ($1 group, $2 sink, $3 topics, $4 partitions), for messages.
    Owner: string
    /// Deletes the rows wholly below the committed offsets ($1 group, $2 topics, $3 partitions, $4 offsets).
    Prune: string
    /// The recorded offsets at or above the committed ones (same parameters as Prune).
    Load: string
}

/// The offsets table's statements and the store the runtime reads.
[<RequireQualifiedAccess>]
module internal PgAppliedOffsets =

    /// The statements of the offsets table `table` for `groupId`.
    let create (table: PgIdentifier) (groupId: string) =
        let index = PgIdentifier.quote (table.Name + "_by_partition")

        let owners = {
            table with
                Name = table.Name + "_owners"
        }

        let ownerKey = "unnest($3::text[], $4::int4[]) AS kflow_claimed (topic, partition)"

        let committed =
            "unnest($2::text[], $3::int4[], $4::int8[]) AS kflow_committed (topic, partition, next_offset)"

        {
            Table = table
            Owners = owners
            GroupId = groupId
            Sink = ""
            Create =
                $"CREATE TABLE IF NOT EXISTS {table.Sql} (group_id text NOT NULL, topic text NOT NULL, \
                  partition integer NOT NULL, first_offset bigint NOT NULL, last_offset bigint NOT NULL, \
                  offsets bigint[] NOT NULL, written_at timestamptz NOT NULL DEFAULT now()); \
                  CREATE INDEX IF NOT EXISTS {index} ON {table.Sql} (group_id, topic, partition, last_offset); \
                  CREATE TABLE IF NOT EXISTS {owners.Sql} (group_id text NOT NULL, sink text NOT NULL, \
                  topic text NOT NULL, partition integer NOT NULL, epoch bigint NOT NULL, \
                  claimed_by text NOT NULL, claimed_at timestamptz NOT NULL DEFAULT now(), \
                  PRIMARY KEY (group_id, sink, topic, partition))"
            // One statement, rows in key order (two claimants lock them in the same order). ON CONFLICT DO
            // UPDATE locks the row FOR NO KEY UPDATE, which waits for every FOR SHARE lock of the old
            // owner's batches in flight; the applied offsets are read by the next statements, whose
            // snapshots are taken after this one committed, so they see those batches.
            Claim =
                $"INSERT INTO {owners.Sql} AS o (group_id, sink, topic, partition, epoch, claimed_by) \
                  SELECT $1, $2, topic, partition, 1, $5 FROM (SELECT DISTINCT topic, partition FROM {ownerKey}) \
                  AS kflow_c ORDER BY topic, partition \
                  ON CONFLICT (group_id, sink, topic, partition) DO UPDATE SET epoch = o.epoch + 1, \
                  claimed_by = EXCLUDED.claimed_by, claimed_at = now() RETURNING topic, partition, epoch"
            Owner =
                $"SELECT o.topic, o.partition, o.epoch, o.claimed_by, o.claimed_at FROM {owners.Sql} AS o \
                  JOIN {ownerKey} ON o.group_id = $1 AND o.sink = $2 AND o.topic = kflow_claimed.topic \
                  AND o.partition = kflow_claimed.partition"
            Prune =
                $"DELETE FROM {table.Sql} AS a USING {committed} WHERE a.group_id = $1 \
                  AND a.topic = kflow_committed.topic AND a.partition = kflow_committed.partition \
                  AND a.last_offset < kflow_committed.next_offset"
            Load =
                $"SELECT a.topic, a.partition, array_agg(DISTINCT o ORDER BY o) FROM {table.Sql} AS a \
                  JOIN {committed} ON a.group_id = $1 AND a.topic = kflow_committed.topic \
                  AND a.partition = kflow_committed.partition AND a.last_offset >= kflow_committed.next_offset \
                  CROSS JOIN LATERAL unnest(a.offsets) AS o WHERE o >= kflow_committed.next_offset \
                  GROUP BY a.topic, a.partition"
        }

    /// <summary>The condition under which a batch's statement writes its rows (and its offsets): none of
    /// its offsets was recorded before, and its claims are current.</summary>
    let writeCondition =
        "(SELECT n FROM kflow_seen) = 0 AND NOT (SELECT fenced FROM kflow_fenced)"

    /// <summary>The one value a batch's statement returns: -1 when it was fenced, else how many of its
    /// offsets were recorded before (nothing was written unless 0).</summary>
    let outcome =
        "SELECT CASE WHEN kflow_fenced.fenced THEN -1 ELSE kflow_seen.n END FROM kflow_seen, kflow_fenced"

    /// <summary>The WITH items that record a batch's offsets ($g group, $t topics, $p partitions, $o offsets:
    /// one element per position) and check its claims ($s sink, $ct topics, $cp partitions, $ce epochs:
    /// one element per partition of the batch, epoch 0 for a partition the writer has not claimed).</summary>
    /// <remarks>
    /// They define <c>kflow_seen (n)</c>, how many of the batch's offsets were recorded before, and
    /// <c>kflow_fenced (fenced)</c>: whether a claim is stale (its owner row holds another epoch) or a
    /// partition without a claim has an owner. <c>kflow_fence</c> locks each claimed owner row FOR SHARE:
    /// concurrent batches of one owner do not block each other, a claim (FOR NO KEY UPDATE) waits for
    /// them, and a batch that reaches the lock after a claim committed sees the new epoch (READ COMMITTED
    /// rechecks a locked row's latest version) and is fenced. The outcome query reads kflow_seen and
    /// kflow_fenced before the data-modifying items run, so the lock is taken before anything is written.
    /// Offsets (and the statement's rows, see writeCondition) are written only when n = 0 and not fenced.
    /// </remarks>
    let recordItems (offsets: PgAppliedOffsets) (first: int) =
        let g, t, p, o = first, first + 1, first + 2, first + 3
        let sink, ct, cp, ce = first + 4, first + 5, first + 6, first + 7
        let owner = "f.group_id = $" + string g + " AND f.sink = $" + string sink

        $"kflow_batch AS (SELECT topic, partition, o FROM unnest(${t}::text[], ${p}::int4[], ${o}::int8[]) \
          AS kflow_b (topic, partition, o)), \
          kflow_range AS (SELECT topic, partition, min(o) AS lo, max(o) AS hi FROM kflow_batch \
          GROUP BY topic, partition), \
          kflow_near AS (SELECT a.topic, a.partition, a.offsets FROM {offsets.Table.Sql} AS a JOIN kflow_range AS r \
          ON a.group_id = ${g} AND a.topic = r.topic AND a.partition = r.partition AND a.last_offset >= r.lo \
          AND a.first_offset <= r.hi), \
          kflow_seen AS (SELECT count(DISTINCT (b.topic, b.partition, b.o)) AS n FROM kflow_near AS a \
          CROSS JOIN LATERAL unnest(a.offsets) AS x JOIN kflow_batch AS b ON b.topic = a.topic \
          AND b.partition = a.partition AND b.o = x), \
          kflow_claim AS (SELECT topic, partition, epoch FROM unnest(${ct}::text[], ${cp}::int4[], \
          ${ce}::int8[]) AS kflow_c (topic, partition, epoch)), \
          kflow_fence AS (SELECT f.topic FROM {offsets.Owners.Sql} AS f JOIN kflow_claim AS c ON {owner} \
          AND f.topic = c.topic AND f.partition = c.partition AND f.epoch = c.epoch WHERE c.epoch > 0 \
          FOR SHARE OF f), \
          kflow_fenced AS (SELECT (SELECT count(*) FROM kflow_fence) \
          < (SELECT count(*) FROM kflow_claim WHERE epoch > 0) \
          OR EXISTS (SELECT FROM {offsets.Owners.Sql} AS f JOIN kflow_claim AS c ON {owner} \
          AND f.topic = c.topic AND f.partition = c.partition WHERE c.epoch = 0) AS fenced), \
          kflow_record AS (INSERT INTO {offsets.Table.Sql} (group_id, topic, partition, first_offset, \
          last_offset, offsets) SELECT ${g}, topic, partition, min(o), max(o), array_agg(o ORDER BY o) \
          FROM kflow_batch WHERE {writeCondition} GROUP BY topic, partition)"

    let private text (value: string) =
        NpgsqlParameter(NpgsqlDbType = NpgsqlDbType.Text, Value = value)

    let private array (dbType: NpgsqlDbType) (values: obj) =
        NpgsqlParameter(NpgsqlDbType = (NpgsqlDbType.Array ||| dbType), Value = values)

    let private partitionParameters (partitions: TopicPartition[]) = [
        array NpgsqlDbType.Text (partitions |> Array.map _.Topic)
        array NpgsqlDbType.Integer (partitions |> Array.map _.Partition)
    ]

    /// Group, topics, partitions, offsets: the parameters of Prune and Load.
    let private offsetParameters (offsets: PgAppliedOffsets) (positions: Position[]) =
        text offsets.GroupId
        :: partitionParameters (positions |> Array.map _.TopicPartition)
        @ [ array NpgsqlDbType.Bigint (positions |> Array.map _.Offset) ]

    /// <summary>The record items' eight parameters, in order: group, topics, partitions, offsets (one
    /// element per position), sink, and the claims of the batch's partitions: topics, partitions, epochs
    /// (<paramref name="claims"/>: one per partition, epoch 0 when unclaimed; empty: no check).</summary>
    let recordParameters
        (offsets: PgAppliedOffsets)
        (positions: Position list)
        (claims: (TopicPartition * int64)[])
        : NpgsqlParameter list =
        offsetParameters offsets (Array.ofList positions)
        @ text offsets.Sink :: partitionParameters (claims |> Array.map fst)
        @ [ array NpgsqlDbType.Bigint (claims |> Array.map snd) ]

    let private committedCommand
        (offsets: PgAppliedOffsets)
        (sql: string)
        (connection: NpgsqlConnection)
        (committed: (TopicPartition * int64) list)
        =
        let command = new NpgsqlCommand(sql, connection)

        for p in
            offsetParameters
                offsets
                (committed
                 |> List.map (fun (tp, offset) -> Position.create tp offset)
                 |> Array.ofList) do
            command.Parameters.Add p |> ignore

        command

    /// Creates the tables and the index if they are missing; returns the offsets with Sink set to the
    /// target table's schema-qualified name (which must exist).
    let ensure
        (offsets: PgAppliedOffsets)
        (target: PgIdentifier)
        (connection: NpgsqlConnection)
        : Task<PgAppliedOffsets> =
        task {
            do! task {
                use command = new NpgsqlCommand(offsets.Create, connection)

                try
                    let! _ = command.ExecuteNonQueryAsync()
                    ()
                with :? PostgresException as error when error.SqlState = PostgresErrorCodes.UniqueViolation ->
                    // Two instances creating the table at the same moment: the other one made it.
                    ()
            }

            use command =
                new NpgsqlCommand(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = pg_catalog.to_regclass($1)",
                    connection
                )

            command.Parameters.Add(text target.Sql) |> ignore
            let! sink = command.ExecuteScalarAsync()

            return {
                offsets with
                    Sink =
                        (match sink with
                         | :? string as name -> name
                         | _ -> string target)
            }
        }

    /// <summary>Claims partitions for this writer (a new owner): bumps each one's epoch in the owners
    /// table and returns the new epochs. Waits for the batches in flight of the previous owner (their
    /// FOR SHARE locks); from its commit on, a batch carrying an older epoch is fenced.</summary>
    let claim
        (offsets: PgAppliedOffsets)
        (connection: NpgsqlConnection)
        (claimedBy: string)
        (partitions: TopicPartition list)
        : Task<(TopicPartition * int64) list> =
        task {
            if partitions.IsEmpty then
                return []
            else
                use command = new NpgsqlCommand(offsets.Claim, connection)

                for p in
                    text offsets.GroupId
                    :: text offsets.Sink
                    :: partitionParameters (Array.ofList partitions)
                    @ [ text claimedBy ] do
                    command.Parameters.Add p |> ignore

                use! reader = command.ExecuteReaderAsync()
                let claimed = ResizeArray()

                while! reader.ReadAsync() do
                    claimed.Add(
                        TopicPartition.create (reader.GetString 0) (reader.GetInt32 1),
                        reader.GetInt64 2
                    )

                return List.ofSeq claimed
        }

    /// "orders[0]: epoch 7, claimed by host pid 12 at 2026-…" for each owner row of the partitions.
    let describeOwners
        (offsets: PgAppliedOffsets)
        (connection: NpgsqlConnection)
        (partitions: TopicPartition list)
        : Task<string list> =
        task {
            use command = new NpgsqlCommand(offsets.Owner, connection)

            for p in
                text offsets.GroupId
                :: text offsets.Sink
                :: partitionParameters (Array.ofList partitions) do
                command.Parameters.Add p |> ignore

            use! reader = command.ExecuteReaderAsync()
            let owners = ResizeArray()

            while! reader.ReadAsync() do
                let claimedAt = reader.GetFieldValue<DateTime>(4).ToString("O")

                owners.Add
                    $"{reader.GetString 0}[{reader.GetInt32 1}]: epoch {reader.GetInt64 2}, claimed by \
                      {reader.GetString 3} at {claimedAt}"

            return List.ofSeq owners
        }

    /// Forgets the rows wholly below the committed offsets.
    let prune
        (offsets: PgAppliedOffsets)
        (connection: NpgsqlConnection)
        (committed: (TopicPartition * int64) list)
        : Task =
        task {
            if not committed.IsEmpty then
                use command = committedCommand offsets offsets.Prune connection committed
                let! _ = command.ExecuteNonQueryAsync()
                ()
        }

    /// Prunes, then reads the recorded offsets at or above the committed ones, ascending per partition.
    let load
        (offsets: PgAppliedOffsets)
        (connection: NpgsqlConnection)
        (committed: (TopicPartition * int64) list)
        : Task<Map<TopicPartition, int64[]>> =
        task {
            if committed.IsEmpty then
                return Map.empty
            else
                do! prune offsets connection committed
                use command = committedCommand offsets offsets.Load connection committed
                use! reader = command.ExecuteReaderAsync()
                let mutable found = Map.empty

                while! reader.ReadAsync() do
                    let tp = TopicPartition.create (reader.GetString 0) (reader.GetInt32 1)
                    found <- Map.add tp (reader.GetFieldValue<int64[]> 2) found

                return found
        }
