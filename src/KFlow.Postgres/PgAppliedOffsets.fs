// The exactly-once mode's table: per batch, the source offsets whose effect the batch applied, written in
// the batch's own statement; read on assignment (to resume past them) and pruned once Kafka commits them.
namespace KFlow.Postgres

open System
open System.Threading.Tasks
open Npgsql
open NpgsqlTypes
open KFlow

/// <summary>The settings of the exactly-once mode (see UpsertConfig.ExactlyOnce).</summary>
/// <remarks>Each batch records the source offsets it applies in <c>OffsetsTable</c>, in the same statement
/// as its rows; the runtime resumes past and skips recorded offsets, so each message's effect is applied
/// once even across crashes, and tables without a unique key (Keys = []) can be appended to.</remarks>
[<NoEquality; NoComparison>]
type ExactlyOnceOptions = {
    /// The workflow's consumer group (WorkflowOptions.GroupId). No default.
    GroupId: string
    /// The sink's own table of applied offsets (table or schema.table), created at start-up if missing.
    /// Several sinks and groups may share it. Default "kflow_applied_offsets".
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

/// The SQL of one offsets table (quoted identifiers; values are always parameters).
type internal PgAppliedOffsets = {
    Table: PgIdentifier
    GroupId: string
    /// CREATE TABLE / INDEX IF NOT EXISTS.
    Create: string
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

        let committed =
            "unnest($2::text[], $3::int4[], $4::int8[]) AS kflow_committed (topic, partition, next_offset)"

        {
            Table = table
            GroupId = groupId
            Create =
                $"CREATE TABLE IF NOT EXISTS {table.Sql} (group_id text NOT NULL, topic text NOT NULL, \
                  partition integer NOT NULL, first_offset bigint NOT NULL, last_offset bigint NOT NULL, \
                  offsets bigint[] NOT NULL, written_at timestamptz NOT NULL DEFAULT now()); \
                  CREATE INDEX IF NOT EXISTS {index} ON {table.Sql} (group_id, topic, partition, last_offset)"
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

    /// <summary>The WITH items that record a batch's offsets ($g group, $t topics, $p partitions, $o offsets:
    /// one element per position) unless some of them are recorded already; they define
    /// <c>kflow_seen (n)</c>, how many of the batch's offsets were recorded before, and write nothing
    /// when n > 0. The statement's rows must be written under the same condition.</summary>
    let recordItems (offsets: PgAppliedOffsets) (first: int) =
        let g, t, p, o = first, first + 1, first + 2, first + 3

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
          kflow_record AS (INSERT INTO {offsets.Table.Sql} (group_id, topic, partition, first_offset, \
          last_offset, offsets) SELECT ${g}, topic, partition, min(o), max(o), array_agg(o ORDER BY o) \
          FROM kflow_batch WHERE (SELECT n FROM kflow_seen) = 0 GROUP BY topic, partition)"

    /// The record items' four parameters, in order: group, topics, partitions, offsets.
    let recordParameters (offsets: PgAppliedOffsets) (positions: Position list) : NpgsqlParameter list =
        let positions = Array.ofList positions

        [
            NpgsqlParameter(NpgsqlDbType = NpgsqlDbType.Text, Value = offsets.GroupId)
            NpgsqlParameter(
                NpgsqlDbType = (NpgsqlDbType.Array ||| NpgsqlDbType.Text),
                Value = (positions |> Array.map _.TopicPartition.Topic)
            )
            NpgsqlParameter(
                NpgsqlDbType = (NpgsqlDbType.Array ||| NpgsqlDbType.Integer),
                Value = (positions |> Array.map _.TopicPartition.Partition)
            )
            NpgsqlParameter(
                NpgsqlDbType = (NpgsqlDbType.Array ||| NpgsqlDbType.Bigint),
                Value = (positions |> Array.map _.Offset)
            )
        ]

    let private committedCommand
        (offsets: PgAppliedOffsets)
        (sql: string)
        (connection: NpgsqlConnection)
        (committed: (TopicPartition * int64) list)
        =
        let command = new NpgsqlCommand(sql, connection)
        let committed = Array.ofList committed

        for p in
            recordParameters
                offsets
                (committed
                 |> Array.map (fun (tp, offset) -> Position.create tp offset)
                 |> List.ofArray) do
            command.Parameters.Add p |> ignore

        command

    /// Creates the table and its index if they are missing.
    let ensure (offsets: PgAppliedOffsets) (connection: NpgsqlConnection) : Task = task {
        use command = new NpgsqlCommand(offsets.Create, connection)

        try
            let! _ = command.ExecuteNonQueryAsync()
            ()
        with :? PostgresException as error when error.SqlState = PostgresErrorCodes.UniqueViolation ->
            // Two instances creating the table at the same moment: the other one made it.
            ()
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
